"""Read a FER dataset in the class-folder layout from a zip archive or a folder, without extracting.

Layout: ``<class>/<image>`` (possibly under one or more wrapping folders, e.g. ``train/angry/x.jpg``)
and, optionally, a ``labels.csv`` with columns ``pth,label[,relFCs]`` whose ``pth`` is relative to the
folder that holds the CSV. The class of an image is the name of the folder that contains it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES, canonical_label

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
LABELS_CSV = "labels.csv"


def _is_hidden(path: str) -> bool:
    return any(part.startswith((".", "__MACOSX")) for part in path.split("/"))


def _zip_central_directory(path: Path) -> bytes | None:
    """The raw central directory of a zip (names, CRC-32s, sizes of every member), or None for zip64 archives."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 65_557))
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        _, _, _, _, _, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", tail[at : at + 22])
        if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
            return None
        f.seek(cd_offset)
        return f.read(cd_size)


class Source:
    """Files of a dataset, addressed by posix paths relative to the archive or folder root.

    Nothing is listed or read until needed, so that fingerprinting a zip for a warm cache load stays cheap.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise EmodetectError(f"data not found: {self.path}")
        if self.path.is_dir():
            self.kind = "folder"
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
        else:
            raise EmodetectError(f"{self.path} is neither a folder nor a zip archive")
        self._zip: zipfile.ZipFile | None = None

    @functools.cached_property
    def _entries(self) -> dict:
        """Relative path -> zip member info, or (size, mtime_ns) for a folder; hidden files left out."""
        if self.kind == "zip":
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise EmodetectError(f"cannot read zip archive {self.path}: {exc}") from None
            infos = (i for i in self._zip.infolist() if not i.is_dir())
            return {i.filename: i for i in sorted(infos, key=lambda i: i.filename) if not _is_hidden(i.filename)}
        entries = {}
        for root, dirs, files in os.walk(self.path):
            dirs.sort()
            for name in sorted(files):
                full = Path(root) / name
                rel = full.relative_to(self.path).as_posix()
                if not _is_hidden(rel):
                    st = full.stat()
                    entries[rel] = (st.st_size, st.st_mtime_ns)
        return entries

    @property
    def files(self) -> list[str]:
        return list(self._entries)

    def read(self, rel: str) -> bytes:
        if self.kind == "zip":
            entry = self._entries[rel]
            return self._zip.read(entry)
        return (self.path / rel).read_bytes()

    def fingerprint(self) -> str:
        """A key that changes whenever the content changes: zip CRC-32s and sizes, or folder sizes and mtimes."""
        h = hashlib.sha256(self.kind.encode())
        if self.kind == "zip" and (directory := _zip_central_directory(self.path)) is not None:
            h.update(directory)  # hashing the raw directory avoids parsing 20k entries on a warm load
        elif self.kind == "zip":
            for name, info in self._entries.items():
                h.update(f"{name}\t{info.CRC:08x}\t{info.file_size}\n".encode())
        else:
            for rel, (size, mtime) in self._entries.items():
                h.update(f"{rel}\t{size}\t{mtime}\n".encode())
        return h.hexdigest()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


@dataclass
class Layout:
    """What a source holds: image paths with their (canonical) folder class, and the CSV annotations."""

    paths: list[str]
    folder_labels: list[str]
    csv_labels: dict[str, str]  # image path -> canonical CSV label
    relfcs: dict[str, float]  # image path -> relFCs
    csv_path: str | None
    n_csv_rows: int = 0
    csv_rows_without_image: int = 0
    ignored_files: list[str] = field(default_factory=list)  # non-image files and images outside class folders
    folder_names: dict[str, str] = field(default_factory=dict)  # folder name as found -> canonical class


def scan(source: Source) -> Layout:
    """Find the images, their class folders and the labels CSV; fail with one clear message on bad layouts."""
    csvs = [f for f in source.files if PurePosixPath(f).name.lower() == LABELS_CSV]
    csv_path = min(csvs, key=lambda f: (f.count("/"), f)) if csvs else None
    paths, folder_labels, ignored = [], [], []
    unknown: dict[str, int] = {}
    folder_names: dict[str, str] = {}
    for rel in source.files:
        p = PurePosixPath(rel)
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            if rel != csv_path:
                ignored.append(rel)
            continue
        if len(p.parts) < 2:
            ignored.append(rel)  # an image at the root belongs to no class folder
            continue
        folder = p.parent.name
        canon = canonical_label(folder)
        if canon is None:
            unknown[folder] = unknown.get(folder, 0) + 1
            continue
        folder_names[folder] = canon
        paths.append(rel)
        folder_labels.append(canon)
    if unknown:
        listed = ", ".join(f"{name!r} ({n} images)" for name, n in sorted(unknown.items()))
        raise EmodetectError(
            f"unknown class folder {listed} in {source.path}; expected one of {', '.join(CLASSES)} "
            "or an alias such as angry, happiness, sadness"
        )
    if not paths:
        raise EmodetectError(f"no images found in {source.path} (expected <class>/<image> folders)")
    layout = Layout(paths, folder_labels, {}, {}, csv_path, ignored_files=ignored, folder_names=folder_names)
    if csv_path is not None:
        _read_labels_csv(source, csv_path, layout)
    return layout


def _read_labels_csv(source: Source, csv_path: str, layout: Layout) -> None:
    root = PurePosixPath(csv_path).parent
    try:
        text = source.read(csv_path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise EmodetectError(f"malformed {csv_path}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise EmodetectError(f"malformed {csv_path}: the file is empty")
    cols = {name.strip(): i for i, name in enumerate(header)}
    if "pth" not in cols or "label" not in cols:
        raise EmodetectError(f"malformed {csv_path}: needs columns 'pth' and 'label', found {header}")
    i_pth, i_label, i_rel = cols["pth"], cols["label"], cols.get("relFCs")
    known = set(layout.paths)
    n_rows = 0
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        n_rows += 1
        if len(row) != len(header):
            raise EmodetectError(f"malformed {csv_path}: line {line_no} has {len(row)} fields, header has {len(header)}")
        label = canonical_label(row[i_label])
        if label is None:
            raise EmodetectError(f"malformed {csv_path}: line {line_no} has unknown label {row[i_label]!r}")
        path = str(root / row[i_pth]) if str(root) != "." else row[i_pth]
        if path not in known:
            layout.csv_rows_without_image += 1
            continue
        layout.csv_labels[path] = label
        if i_rel is not None and row[i_rel].strip():
            try:
                value = float(row[i_rel])
            except ValueError:
                raise EmodetectError(f"malformed {csv_path}: line {line_no} has relFCs {row[i_rel]!r}") from None
            if not math.isfinite(value):
                raise EmodetectError(f"malformed {csv_path}: line {line_no} has relFCs {row[i_rel]!r}")
            layout.relfcs[path] = value
    layout.n_csv_rows = n_rows
