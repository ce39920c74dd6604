"""The data layer on the real AffectNet zip: the numbers of ../shared/data/README.md."""

import numpy as np
import pytest

from emodetect.data import load_dataset
from emodetect.data.audit import compute_audit

pytestmark = pytest.mark.real_data

README_COUNTS = {  # folder: (images, JPEG, PNG)
    "anger": (2896, 2896, 0),
    "contempt": (2585, 2503, 82),
    "disgust": (2229, 2186, 43),
    "fear": (2858, 2858, 0),
    "happy": (2419, 21, 2398),
    "neutral": (2458, 63, 2395),
    "sad": (2781, 2781, 0),
    "surprise": (3635, 3105, 530),
}


def test_counts_and_formats_match_the_data_readme(real_gray):
    assert len(real_gray) == 21861 and real_gray.images.shape == (21861, 96, 96)
    assert real_gray.info["unreadable"] == []
    a = compute_audit(real_gray)
    for c, (n, jpeg, png) in README_COUNTS.items():
        assert a["counts"]["folder"][c] == n
        assert a["formats"]["by_class"][c] == {"jpeg": jpeg, "png": png}
    assert a["n_resized"] == 0


def test_label_sources_relfcs_and_duplicates(real_gray):
    a = compute_audit(real_gray)
    assert a["csv"]["n_rows_matched"] == 21085 and a["csv"]["n_images_without_row"] == 776
    assert round(a["csv"]["agreement"], 2) == 0.64
    assert a["relfcs"]["min"] == pytest.approx(0.516, abs=1e-3) and a["relfcs"]["max"] < 0.90
    exact, near = a["duplicates"]["exact"], a["duplicates"]["near"]
    assert 150 <= exact["n_groups"] <= 220  # "about 200 groups" in the full dataset
    assert 600 <= near["n_groups"] <= 900 and 1700 <= near["n_images"] <= 2500
    assert near["n_groups_across_classes"] > 0
    assert exact["n_groups_across_splits"] == near["n_groups_across_splits"] == 0
    assert a["formats"]["warning"]


def test_stored_split_is_stratified_and_round_trips(real_gray, real_zip, real_cache):
    frac = np.bincount(real_gray.split) / len(real_gray)
    np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.005)
    again = load_dataset(real_zip, cache_dir=real_cache, progress=False)
    assert again.info["from_cache"] and again.info["seconds"] < 5
    np.testing.assert_array_equal(again.split, real_gray.split)
    np.testing.assert_array_equal(again.images[::97], real_gray.images[::97])
    csv = load_dataset(real_zip, cache_dir=real_cache, label_source="csv", progress=False)
    assert len(csv) == 21085 and csv.info["n_dropped_no_csv_row"] == 776
    assert (csv.labels == real_gray.labels[real_gray.manifest["csv_label"] != ""]).mean() == pytest.approx(
        0.6436, abs=1e-3
    )


def _digest(a) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).astype(np.int64).tobytes()).hexdigest()[:16]


def test_duplicate_groups_and_split_are_those_of_the_all_pairs_search(real_gray):
    """The scalable duplicate search gives the very groups, and so the very split, of the original all-pairs
    search (digests recorded from a cache built by it)."""
    assert np.bincount(real_gray.split).tolist() == [17490, 2187, 2184]
    assert _digest(real_gray.manifest["exact_group"]) == "88d3b03fcf76c70e"
    assert _digest(real_gray.manifest["dup_group"]) == "c3553f793dbf0bca"
    assert _digest(real_gray.split) == "777a503e4fc41524"
    stats = real_gray.info["dedup"]
    if stats:  # built in this session: every image has at most 32 candidates
        assert stats["n_candidates"] <= 32 * len(real_gray) and stats["n_verified"] <= stats["n_candidates"]
