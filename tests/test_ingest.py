import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dataset
from emodetect.data import load_dataset
from emodetect.data.ingest import default_cache_dir
from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES, labels_to_indices


def _load(src, tmp_path, **kw):
    return load_dataset(src, cache_dir=tmp_path / "cache", progress=False, **kw)


def test_zip_and_folder_give_the_same_pixels_labels_and_split(tmp_path, tiny_folder, tiny_zip):
    root, info = tiny_folder
    a = _load(root, tmp_path)
    b = _load(tiny_zip[0], tmp_path)
    assert list(a.paths) == list(b.paths)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.split, b.split)
    expected_n = len(info["images"]) + 2  # plus the byte copy and the re-crop; corrupt files skipped
    assert len(a) == expected_n and a.images.shape == (expected_n, 96, 96)


def test_corrupt_files_are_skipped_counted_and_named(tmp_path, tiny_zip):
    ds = _load(tiny_zip[0], tmp_path)
    assert set(ds.info["unreadable"]) == tiny_zip[1]["unreadable"]
    assert ds.info["n_ignored_files"] == 1  # notes.txt


def test_duplicates_are_grouped_and_never_split(tmp_path, tiny_zip):
    ds = _load(tiny_zip[0], tmp_path)
    copies = [list(ds.paths).index(p) for p in tiny_zip[1]["copies"]]
    groups = ds.manifest["dup_group"][copies]
    assert groups[0] >= 0 and (groups == groups[0]).all()
    assert len(set(ds.split[copies])) == 1


def test_second_load_comes_from_cache_and_is_identical(tmp_path, tiny_zip):
    first = _load(tiny_zip[0], tmp_path)
    second = _load(tiny_zip[0], tmp_path)
    assert not first.info["from_cache"] and second.info["from_cache"]
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.split, second.split)
    for k in first.manifest:
        np.testing.assert_array_equal(first.manifest[k], second.manifest[k])


def test_changed_source_or_setting_rebuilds(tmp_path):
    make_dataset(tmp_path / "d", n_per_class=3)
    first = _load(tmp_path / "d", tmp_path)
    rgb = _load(tmp_path / "d", tmp_path, mode="rgb")
    assert rgb.images.shape == (len(first), 96, 96, 3)
    gray_again = _load(tmp_path / "d", tmp_path)
    assert gray_again.info["from_cache"]
    other_seed = _load(tmp_path / "d", tmp_path, seed=7)
    assert other_seed.info["split_id"] != first.info["split_id"]
    make_dataset(tmp_path / "d", n_per_class=4)  # adds one image per class
    changed = _load(tmp_path / "d", tmp_path)
    assert not changed.info["from_cache"] and len(changed) == len(first) + len(CLASSES)


def test_killed_ingest_never_loads_as_valid(tmp_path, tiny_zip):
    ds = _load(tiny_zip[0], tmp_path)
    folder = Path(ds.info["cache"])
    (folder / "index.json").unlink()  # as if killed before the last write
    again = _load(tiny_zip[0], tmp_path)
    assert not again.info["from_cache"]
    images = next(folder.glob("images-gray-*.npy"))
    images.write_bytes(images.read_bytes()[:1000])  # a torn images file
    third = _load(tiny_zip[0], tmp_path)
    np.testing.assert_array_equal(third.images, ds.images)
    assert not list(folder.glob(".*.tmp-*"))


def test_label_source_csv_and_relfcs_ceiling(tmp_path):
    info = make_dataset(tmp_path / "d", n_per_class=6)
    folder = _load(tmp_path / "d", tmp_path)
    csv = _load(tmp_path / "d", tmp_path, label_source="csv")
    assert csv.info["n_dropped_no_csv_row"] == len(CLASSES)  # the last image of each class has no row
    assert len(csv) == len(folder) - len(CLASSES) == info["n_csv_rows"]
    np.testing.assert_array_equal(csv.labels, labels_to_indices(csv.manifest["csv_label"]))  # labels: the CSV's
    relabelled = (csv.labels != labels_to_indices(csv.manifest["folder_label"])).sum()
    assert relabelled == 2 * len(CLASSES)  # images 0 and 3 of each class
    flat = _load(tmp_path / "d", tmp_path, relfcs_max=0.72)  # relFCs 0.75 and 0.80 are dropped
    assert flat.info["n_dropped_relfcs"] == 2 * len(CLASSES)
    assert np.nanmax(flat.manifest["relfcs"]) <= 0.72
    # the stored split is shared by every setting: the same image is in the same split
    where = dict(zip(folder.paths, folder.split))
    assert all(where[p] == s for p, s in zip(flat.paths, flat.split))


def test_datasets_lacking_classes_load(tmp_path):
    make_dataset(tmp_path / "d", classes=("Angry", "Happy", "Surprise"), n_per_class=4, with_csv=False)
    ds = _load(tmp_path / "d", tmp_path)
    counts = ds.class_counts()
    assert counts[CLASSES.index("anger")] == 4 and counts[CLASSES.index("contempt")] == 0
    with pytest.raises(EmodetectError, match="label source 'csv' needs a labels.csv"):
        _load(tmp_path / "d", tmp_path, label_source="csv")
    make_dataset(tmp_path / "e", n_per_class=2)
    kept = _load(tmp_path / "e", tmp_path, relfcs_max=0.1)  # images without relFCs have nothing to judge by
    assert len(kept) == len(CLASSES) and (kept.manifest["csv_label"] == "").all()
    with pytest.raises(EmodetectError, match="no images left"):
        _load(tmp_path / "e", tmp_path, relfcs_max=0.1, label_source="csv")


def test_source_is_never_modified(tmp_path, tiny_folder):
    root, _ = tiny_folder
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}
    _load(root, tmp_path)
    assert before == {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_bad_settings_are_clear_errors(tmp_path, tiny_zip):
    with pytest.raises(EmodetectError, match="colour mode"):
        _load(tiny_zip[0], tmp_path, mode="cmyk")
    with pytest.raises(EmodetectError, match="label source"):
        _load(tiny_zip[0], tmp_path, label_source="vibes")
    with pytest.raises(EmodetectError, match="fractions"):
        _load(tiny_zip[0], tmp_path, fractions=(0.9, 0.2, 0.1))


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EMODETECT_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("EMODETECT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "emodetect"
    assert os.environ.get("EMODETECT_CACHE") is None


def test_a_killed_cache_write_leaves_no_orphan_and_a_damaged_cache_is_rebuilt(tmp_path, tiny_zip):
    first = _load(tiny_zip[0], tmp_path)
    folder = Path(first.info["cache"])
    orphan = folder / ".images-gray-96.npy.tmp-99999999"  # what a writer killed mid-write leaves behind
    orphan.write_bytes(b"half a file")
    again = _load(tiny_zip[0], tmp_path)
    assert again.info["from_cache"] and not orphan.exists()
    for damage in ("truncate", "delete", "garble"):
        manifest = folder / "manifest.csv"
        if damage == "truncate":
            manifest.write_bytes(manifest.read_bytes()[:300])
        elif damage == "delete":
            manifest.unlink()
        else:
            manifest.write_bytes(b"\xff\xfe\x00 not a manifest")
        rebuilt = _load(tiny_zip[0], tmp_path)
        assert not rebuilt.info["from_cache"], damage
        np.testing.assert_array_equal(rebuilt.images, first.images)
        assert _load(tiny_zip[0], tmp_path).info["from_cache"]
    (folder / "index.json").write_text("{not json")
    assert not _load(tiny_zip[0], tmp_path).info["from_cache"]


def test_damaged_cache_files_of_any_kind_are_rebuilt_never_trusted_or_hung_on(tmp_path, tiny_zip):
    first = _load(tiny_zip[0], tmp_path)
    folder = Path(first.info["cache"])
    images = next(folder.glob("images-gray-*.npy"))
    split = next(folder.glob("split-*.npy"))
    damages = {
        "wrong shape": lambda: np.save(images, np.zeros((len(first), 5, 5), np.uint8)),
        "wrong dtype": lambda: np.save(images, np.zeros(first.images.shape, np.float64)),
        "bad split values": lambda: np.save(split, np.full(len(first), 7, np.int8)),
        "a folder": lambda: (images.unlink(), images.mkdir()),
        "a pipe": lambda: (images.unlink(), os.mkfifo(images)),
        "/dev/zero": lambda: ((folder / "index.json").unlink(), os.symlink("/dev/zero", folder / "index.json")),
        "a bad label": lambda: (folder / "manifest.csv").write_text(
            (folder / "manifest.csv").read_text().replace(",anger,", ",evil,", 1)),
    }  # fmt: skip
    for name, damage in damages.items():
        damage()
        again = _load(tiny_zip[0], tmp_path)
        np.testing.assert_array_equal(again.images, first.images, err_msg=name)
        np.testing.assert_array_equal(again.split, first.split, err_msg=name)
        np.testing.assert_array_equal(again.labels, first.labels, err_msg=name)
