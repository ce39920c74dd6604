import pytest

from conftest import make_dataset, zip_folder
from emodetect.data.source import Source, scan
from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES


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
def test_malformed_labels_csv_blocks_only_csv_labels(tmp_path, csv_text, message):
    from emodetect.data import load_dataset

    make_dataset(tmp_path / "d", n_per_class=2)
    (tmp_path / "d" / "labels.csv").write_text(csv_text)
    layout = scan(Source(tmp_path / "d"))
    assert message in layout.csv_error and not layout.csv_labels
    assert any("labels.csv ignored" in w and message in w for w in layout.warnings)
    ds = load_dataset(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)  # folder labels: unaffected
    assert len(ds) == 2 * 8 and any(message in w for w in ds.info["warnings"])
    with pytest.raises(EmodetectError, match=message):
        load_dataset(tmp_path / "d", label_source="csv", cache_dir=tmp_path / "c", progress=False)


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


# ------------------------------------------------------------------------- no single file stops a run
import os  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zipfile  # noqa: E402

from emodetect.data import load_dataset  # noqa: E402


def _member_offsets(path, name) -> tuple[int, int]:
    """(offset of the member's local header, offset of its central directory entry)."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(name).header_offset
    central = data.find(b"PK\x01\x02", 0)
    while True:  # find the central entry that names this member
        n = struct.unpack("<H", data[central + 28 : central + 30])[0]
        if data[central + 46 : central + 46 + n].decode() == name:
            return local, central
        central = data.find(b"PK\x01\x02", central + 4)


def _patch(path, at: int, value: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + len(value)] = value
    path.write_bytes(bytes(data))


def _hostile_zip(tmp_path):
    root = tmp_path / "d"
    make_dataset(root, n_per_class=3, with_csv=False)
    archive = zip_folder(root, tmp_path / "d.zip")
    names = sorted(n for n in zipfile.ZipFile(archive).namelist() if n.startswith(("anger/", "fear/")))
    bad_crc, bad_header, encrypted, deflate64 = names[:4]
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(bad_crc)
        data_at = info.header_offset + 30 + len(bad_crc)
    _patch(archive, data_at + 200, b"\x00\x01\x02\x03")  # corrupt the stored bytes: the CRC no longer matches
    local, _ = _member_offsets(archive, bad_header)
    _patch(archive, local, b"XXXX")  # the local header signature
    for name, flag, method in ((encrypted, 0x1, None), (deflate64, None, 9)):
        local, central = _member_offsets(archive, name)
        for base, flag_at, method_at in ((local, 6, 8), (central, 8, 10)):
            if flag is not None:
                _patch(archive, base + flag_at, struct.pack("<H", flag))
            if method is not None:
                _patch(archive, base + method_at, struct.pack("<H", method))
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as z:  # a bomb: 40 MiB of zeros in ~40 KB
        z.writestr("sad/bomb.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (40 << 20))
    return archive, {bad_crc: "corrupt zip member", bad_header: "corrupt zip member", encrypted: "encrypted",
                     deflate64: "unsupported zip compression", "sad/bomb.png": "zip bomb"}  # fmt: skip


def test_corrupt_encrypted_unsupported_and_bomb_zip_members_are_skipped_and_named(tmp_path):
    archive, expected = _hostile_zip(tmp_path)
    ds = load_dataset(archive, cache_dir=tmp_path / "c", progress=False)
    reasons = ds.info["unreadable_reasons"]
    for name, why in expected.items():
        assert why in reasons[name], (name, reasons.get(name))
    assert len(ds) == 3 * 8 - 4  # everything else is there


def test_members_are_read_with_a_size_cap_whatever_their_header_says(tmp_path):
    from emodetect.data.source import UnreadableFile, read_zip_member

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("anger/x.png", b"\0" * 5000)
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("anger/x.png")
        with pytest.raises(UnreadableFile, match="limit"):
            read_zip_member(z, info, max_bytes=1000)


def test_pipes_sockets_devices_and_symlinks_in_a_folder(tmp_path):
    root = tmp_path / "d"
    make_dataset(root, n_per_class=2, with_csv=False)
    os.mkfifo(root / "anger" / "pipe.jpg")  # reading it would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "fear" / "sock.png"))
    os.symlink("/dev/null", root / "sad" / "device.jpg")  # a character device behind a link
    os.symlink(root / "nowhere.jpg", root / "happy" / "dangling.jpg")
    outside = tmp_path / "elsewhere" / "contempt"
    make_dataset(tmp_path / "elsewhere", n_per_class=2, classes=("contempt",), with_csv=False)
    (root / "contempt").rename(tmp_path / "old_contempt")
    os.symlink(outside, root / "contempt")  # a symlinked class folder is followed
    os.symlink(root, root / "anger" / "loop")  # a loop back to the root is cut
    cmd = [sys.executable, "-m", "emodetect", "ingest", str(root), "--cache-dir", str(tmp_path / "c")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # a hang fails here instead
    sock.close()
    assert run.returncode == 0, run.stderr
    ds = load_dataset(root, cache_dir=tmp_path / "c", progress=False)
    assert len(ds) == 8 * 2 and (ds.labels == CLASSES.index("contempt")).sum() == 2
    assert "dangling" in ds.info["unreadable_reasons"]["happy/dangling.jpg"]
    assert "dangling.jpg" in run.stdout
    layout = scan(Source(root))
    for special in ("anger/pipe.jpg", "fear/sock.png", "sad/device.jpg"):
        assert special in layout.ignored_files and special not in layout.paths


def _csv_dataset(tmp_path, rows: list[str]):
    root = tmp_path / "d"
    make_dataset(root, n_per_class=2, with_csv=False)
    (root / "labels.csv").write_text(",pth,label,relFCs\n" + "\n".join(rows) + "\n")
    return root


def test_labels_csv_problems_are_counted_named_warnings(tmp_path):
    root = _csv_dataset(tmp_path, [
        "0,anger/img0_0.jpg,happy,0.7", "1,anger/img0_0.jpg,sad,0.7",  # conflicting duplicate rows
        "2,anger/img0_1.jpg,fear,0.7", "3,anger/img0_1.jpg,fear,0.7",  # an identical duplicate is fine
        "4,./happy/img4_0.jpg,neutral,0.7", "5,sad\\img6_1.jpg,anger,0.7",  # ./ and backslash paths
        "6,anger/missing.jpg,anger,0.7",  # a row for a file that is not there
    ])  # fmt: skip
    layout = scan(Source(root))
    text = " | ".join(layout.warnings)
    assert "1 images have rows with different labels" in text and "anger/img0_0.jpg" in text
    assert "1 rows name no image" in text and "anger/missing.jpg" in text
    assert "2 paths written with './' or backslashes were normalised" in text
    assert "anger/img0_0.jpg" not in layout.csv_labels and layout.csv_labels["anger/img0_1.jpg"] == "fear"
    assert layout.csv_labels["happy/img4_0.jpg"] == "neutral" and layout.csv_labels["sad/img6_1.jpg"] == "anger"
    assert layout.csv_error is None


def test_an_oversized_csv_field_is_a_clear_error_that_never_blocks_folder_labels(tmp_path):
    root = _csv_dataset(tmp_path, [f"0,anger/img0_0.jpg,anger,{'9' * 300_000}"])
    ds = load_dataset(root, cache_dir=tmp_path / "c", progress=False)
    assert len(ds) == 16 and any("field larger than field limit" in w for w in ds.info["warnings"])
    with pytest.raises(EmodetectError, match="field larger than field limit"):
        load_dataset(root, label_source="csv", cache_dir=tmp_path / "c", progress=False)


def _overlap_bomb(path, n_members: int = 40, kernel_mb: int = 3):
    """Members that all share one deflate stream through quoted local headers (Fifield's overlapping bomb)."""
    import zlib

    raw = b"\xff\xd8" + b"\xff" * (kernel_mb * 1_000_000) + bytes(range(256)) * 100
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = co.compress(raw) + co.flush()
    names = [f"anger/{i:05d}.jpg".encode() for i in range(n_members)]

    def local(name, crc, csize, usize):
        return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, csize, usize, len(name), 0) + name

    usize, csize, crc, headers, suffix = [0] * n_members, [0] * n_members, [0] * n_members, [None] * n_members, b""
    for i in range(n_members - 1, -1, -1):
        if i == n_members - 1:
            usize[i], csize[i], crc[i] = len(raw), len(kernel), zlib.crc32(raw)
        else:
            usize[i] = len(suffix) + len(raw)
            csize[i] = csize[i + 1] + 5 + len(headers[i + 1])
            crc[i] = zlib.crc32(raw, zlib.crc32(suffix))
        headers[i] = local(names[i], crc[i], csize[i], usize[i])
        suffix = headers[i] + suffix
    body, offsets = bytearray(), []
    for i in range(n_members):
        offsets.append(len(body))
        body += headers[i]
        if i < n_members - 1:
            size = len(headers[i + 1])
            body += struct.pack("<BHH", 0, size, size ^ 0xFFFF)
    body += kernel
    cd = bytearray()
    for i in range(n_members):
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc[i], csize[i], usize[i],
                          len(names[i]), 0, 0, 0, 0, 0, offsets[i]) + names[i]  # fmt: skip
    path.write_bytes(bytes(body) + bytes(cd) + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n_members, n_members,
                                                            len(cd), len(body), 0))  # fmt: skip
    return path


def test_an_overlapping_member_zip_bomb_is_refused_from_its_directory(tmp_path):
    bomb = _overlap_bomb(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(EmodetectError, match="zip bomb"):
        scan(Source(bomb))


def test_files_that_would_block_or_never_end_are_not_read(tmp_path):
    root = tmp_path / "d"
    make_dataset(root, n_per_class=2, with_csv=False)
    if os.path.exists("/proc/kmsg"):
        os.symlink("/proc/kmsg", root / "anger" / "kmsg.jpg")  # a "regular" file whose read blocks
    os.symlink("/proc", root / "fear" / "proc")  # a pseudo-filesystem is never walked
    cmd = [sys.executable, "-m", "emodetect", "ingest", str(root), "--cache-dir", str(tmp_path / "c")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    ds = load_dataset(root, cache_dir=tmp_path / "c", progress=False)
    assert len(ds) == 16
