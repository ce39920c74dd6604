import json

import numpy as np

from conftest import make_dataset
from emodetect.data import load_dataset
from emodetect.data.audit import compute_audit, write_audit
from emodetect.labels import CLASSES


def test_audit_numbers_on_a_known_dataset(tmp_path, tiny_zip):
    ds = load_dataset(tiny_zip[0], cache_dir=tmp_path / "c", progress=False)
    a = compute_audit(ds)
    n = len(tiny_zip[1]["images"])
    assert a["n_images"] == n + 2 and a["n_unreadable"] == 2
    first_class = tiny_zip[1]["first"].split("/")[0]
    assert a["counts"]["folder"][first_class] == 6 + 2
    c = a["csv"]
    assert c["n_rows_matched"] == tiny_zip[1]["n_csv_rows"]
    assert c["n_images_without_row"] == len(CLASSES) + 2  # last image per class, plus the two copies
    # images 0 and 3 of every class are relabelled: 2 of 5 rows disagree
    assert np.isclose(c["agreement"], 3 / 5)
    table = np.array(c["confusion_folder_vs_csv"])
    assert table.sum() == c["n_rows_matched"] and np.trace(table) == 3 * len(CLASSES)
    assert a["duplicates"]["exact"]["n_groups"] == 1 and a["duplicates"]["near"]["n_images"] == 3
    assert a["duplicates"]["near"]["n_groups_across_splits"] == 0
    # even classes are JPEG, odd classes PNG: the audit must flag the shortcut
    assert a["formats"]["warning"] and "format" in a["formats"]["warning"]
    assert a["formats"]["format_only_accuracy"] > a["formats"]["majority_class_accuracy"]
    assert np.isclose(a["relfcs"]["min"], 0.6) and np.isclose(a["relfcs"]["max"], 0.8)


def test_no_format_warning_when_formats_are_mixed(tmp_path):
    make_dataset(tmp_path / "d", n_per_class=4, classes=("anger", "fear"))  # anger JPEG, fear PNG ...
    for p in (tmp_path / "d" / "fear").glob("*.png"):  # ... until fear is JPEG too
        p.rename(p.with_suffix(".jpg"))
    ds = load_dataset(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    # magic bytes, not extensions, decide the format: fear is still PNG inside
    assert set(ds.manifest["format"][ds.manifest["folder_label"] == "fear"]) == {"png"}


def test_write_audit_files(tmp_path, tiny_zip):
    ds = load_dataset(tiny_zip[0], cache_dir=tmp_path / "c", progress=False)
    write_audit(ds, tmp_path / "out")
    for name in ("audit.md", "audit.json", "contact_sheet.png", "relfcs.png", "folder_vs_csv.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["n_images"] == len(ds)
    md = (tmp_path / "out" / "audit.md").read_text()
    for section in ("Counts per class", "File formats", "Duplicates", "relFCs", "Stored split", "unreadable files"):
        assert section in md
