import pytest

from conftest import make_dataset, zip_folder
from emodetect.data.source import Source, scan
from emodetect.errors import EmodetectError


def test_scan_finds_images_labels_and_ignores_non_images(tiny_folder):
    root, info = tiny_folder
    layout = scan(Source(root))
    assert set(info["images"]) <= set(layout.paths)
    assert any(p.endswith("notes.txt") for p in layout.ignored_files)
    assert layout.n_csv_rows == info["n_csv_rows"]
    assert all(p in layout.paths for p in layout.csv_labels)


def test_aliases_and_nested_layouts_load(tmp_path):
    make_dataset(tmp_path / "fer" / "train", classes=("Angry", "happiness", "Sad"), with_csv=False, n_per_class=2)
    archive = zip_folder(tmp_path / "fer", tmp_path / "fer.zip", prefix="wrapped/")
    for src in (tmp_path / "fer", archive):
        layout = scan(Source(src))
        assert sorted(set(layout.folder_labels)) == ["anger", "happy", "sad"]
        assert layout.csv_path is None


def test_hidden_files_are_skipped(tmp_path):
    make_dataset(tmp_path / "d", n_per_class=2)
    (tmp_path / "d" / "anger" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "d" / "__MACOSX" / "anger").mkdir(parents=True)
    (tmp_path / "d" / "__MACOSX" / "anger" / "._x.jpg").write_bytes(b"junk")
    assert not any("MACOSX" in p or "DS_Store" in p for p in Source(tmp_path / "d").files)


@pytest.mark.parametrize(
    "csv_text, message",
    [
        ("pth,emotion\nanger/a.jpg,anger\n", "needs columns 'pth' and 'label'"),
        (",pth,label,relFCs\n0,anger/img0_0.jpg,banana,0.7\n", "unknown label 'banana'"),
        (",pth,label,relFCs\n0,anger/img0_0.jpg,anger\n", "has 3 fields"),
        (",pth,label,relFCs\n0,anger/img0_0.jpg,anger,abc\n", "relFCs 'abc'"),
        ("", "the file is empty"),
    ],
)
def test_malformed_labels_csv_is_one_clear_error(tmp_path, csv_text, message):
    make_dataset(tmp_path / "d", n_per_class=2)
    (tmp_path / "d" / "labels.csv").write_text(csv_text)
    with pytest.raises(EmodetectError, match=message):
        scan(Source(tmp_path / "d"))


def test_unknown_class_folder_empty_and_missing_paths(tmp_path):
    make_dataset(tmp_path / "d", n_per_class=2, classes=("anger", "bananas"), with_csv=False)
    with pytest.raises(EmodetectError, match="unknown class folder 'bananas'"):
        scan(Source(tmp_path / "d"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmodetectError, match="no images found"):
        scan(Source(tmp_path / "empty"))
    with pytest.raises(EmodetectError, match="data not found"):
        Source(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(EmodetectError, match="neither a folder nor a zip"):
        Source(tmp_path / "file.txt")


def test_fingerprint_follows_content(tmp_path):
    make_dataset(tmp_path / "d", n_per_class=2)
    a = zip_folder(tmp_path / "d", tmp_path / "a.zip")
    b = zip_folder(tmp_path / "d", tmp_path / "b.zip")
    assert Source(a).fingerprint() == Source(b).fingerprint()  # same content, different file
    (tmp_path / "d" / "anger" / "img0_0.jpg").write_bytes(b"changed")
    c = zip_folder(tmp_path / "d", tmp_path / "c.zip")
    assert Source(c).fingerprint() != Source(a).fingerprint()
