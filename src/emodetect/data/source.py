"""Read a FER dataset in the class-folder layout from a zip archive or a folder, without extracting.

Layout: ``<class>/<image>`` (possibly under one or more wrapping folders, e.g. ``train/angry/x.jpg``)
and, optionally, a ``labels.csv`` with columns ``pth,label[,relFCs]`` whose ``pth`` is relative to the
folder that holds the CSV. The class of an image is the name of the folder that contains it.

No single file stops a scan or a read: a zip member that is encrypted, uses an unsupported compression,
declares an absurd size (a zip bomb) or fails its CRC, a dangling symlink or an unreadable file is named
with its reason; named pipes, sockets and device files are ignored (reading one would hang); symlinked
folders are followed once (loops are cut). A malformed ``labels.csv`` is recorded in `Layout.csv_error`
and only matters to a caller that asks for CSV labels.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from emodetect.errors import EmodetectError
from emodetect.files import read_regular
from emodetect.labels import CLASSES, canonical_label

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
LABELS_CSV = "labels.csv"
MAX_FILE_BYTES = 256 * 1024 * 1024  # one image file (or zip member) at most; a 50-megapixel TIFF fits
MAX_CSV_BYTES = 64 * 1024 * 1024
MAX_ZIP_RATIO = 200  # images compress a few times at most; a member claiming more is a zip bomb
_SYSTEM_DIRS = ("/proc", "/sys", "/dev")  # pseudo-filesystems: never part of a dataset, and walking them can fail
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


class UnreadableFile(EmodetectError):
    """A file of a dataset that cannot be read (the message says why); the rest of the dataset is fine."""


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
        if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF or cd_offset + cd_size > size:
            return None
        f.seek(cd_offset)
        return f.read(cd_size)


def zip_member_problem(info: zipfile.ZipInfo, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """Why a zip member cannot be read, judged from its header alone (None if it looks readable)."""
    if info.flag_bits & 0x1:
        return "encrypted zip member"
    if info.compress_type not in _ZIP_METHODS:
        return f"unsupported zip compression (method {info.compress_type})"
    if info.file_size > max_bytes:
        return f"declares {info.file_size:,} bytes, over the {max_bytes:,}-byte limit per file"
    if info.file_size > (1 << 20) and info.file_size > MAX_ZIP_RATIO * max(1, info.compress_size):
        return f"declares {info.file_size:,} bytes from {info.compress_size:,} compressed (a zip bomb)"
    return None


def read_zip_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of one member, read with a size cap whatever its header says; `UnreadableFile` on any fault."""
    problem = zip_member_problem(info, max_bytes)
    if problem:
        raise UnreadableFile(problem)
    try:
        with z.open(info) as f:
            data = f.read(max_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise UnreadableFile(f"corrupt zip member ({type(exc).__name__}: {str(exc)[:120]})") from None
    if len(data) > max_bytes:
        raise UnreadableFile(f"expands beyond the {max_bytes:,}-byte limit per file")
    return data


def read_regular_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file, read with a size cap; `UnreadableFile` for anything else or on any fault."""
    if not os.path.lexists(path) or not os.path.exists(path):
        raise UnreadableFile("missing file or dangling symbolic link")
    try:
        return read_regular(path, max_bytes)
    except OSError as exc:
        raise UnreadableFile(f"cannot be read ({exc.strerror or str(exc)[:160]})") from None


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
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            self.kind = "zip"
        else:
            raise EmodetectError(f"{self.path} is neither a folder nor a zip archive")
        self._zip: zipfile.ZipFile | None = None
        self.ignored: list[str] = []  # special files (pipes, sockets, devices) and symlink loops, never read

    @functools.cached_property
    def _entries(self) -> dict:
        """Relative path -> zip member info, or (size, mtime_ns) for a folder; hidden files left out."""
        if self.kind == "zip":
            try:
                self._zip = zipfile.ZipFile(self.path)
                infos = [i for i in self._zip.infolist() if not i.is_dir()]
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise EmodetectError(f"cannot read zip archive {self.path}: {exc}") from None
            declared, size = sum(i.file_size for i in infos), self.path.stat().st_size
            if declared > MAX_ZIP_RATIO * size + (64 << 20):  # members sharing their data: an overlap zip bomb
                raise EmodetectError(f"{self.path} declares {declared:,} bytes of members in a {size:,}-byte archive "
                                     "(a zip bomb); refusing to read it")  # fmt: skip
            return {i.filename: i for i in sorted(infos, key=lambda i: i.filename) if not _is_hidden(i.filename)}
        return self._walk_folder()

    def _walk_folder(self) -> dict:
        entries = {}
        seen_dirs = set()
        for root, dirs, files in os.walk(self.path, followlinks=True):
            real = os.path.realpath(root)
            system = any(real == d or real.startswith(d + "/") for d in _SYSTEM_DIRS)
            if real in seen_dirs or system:  # a symlink loop, a second link to a folder, or /proc, /sys, /dev
                why = "symlink loop" if real in seen_dirs else "system folder"
                self.ignored.append(Path(root).relative_to(self.path).as_posix() + f"/ ({why})")
                dirs[:] = []
                continue
            seen_dirs.add(real)
            dirs.sort()
            for name in sorted(files):
                full = Path(root) / name
                rel = full.relative_to(self.path).as_posix()
                if _is_hidden(rel):
                    continue
                try:
                    st = full.stat()
                except OSError:  # a dangling symlink or a permission problem: named when it is read
                    try:
                        entries[rel] = (-1, full.lstat().st_mtime_ns)
                    except OSError:  # gone since it was listed
                        pass
                    continue
                if stat.S_ISREG(st.st_mode):
                    entries[rel] = (st.st_size, st.st_mtime_ns)
                else:
                    self.ignored.append(rel)  # a named pipe, socket or device: reading it could hang
        return entries

    @property
    def files(self) -> list[str]:
        return list(self._entries)

    def read(self, rel: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The bytes of one file; `UnreadableFile` with the reason for anything that cannot be read."""
        if self.kind == "zip":
            info = self._entries[rel]  # lists the archive (and opens it) on first use
            return read_zip_member(self._zip, info, max_bytes)
        return read_regular_file(self.path / rel, max_bytes)

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
            for rel in self.ignored:  # special files change what a scan reports
                h.update(f"{rel}\tspecial\n".encode())
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
    ignored_files: list[str] = field(default_factory=list)  # non-image files, images outside class folders, specials
    folder_names: dict[str, str] = field(default_factory=dict)  # folder name as found -> canonical class
    csv_error: str | None = None  # why labels.csv cannot be used (CSV labels are then empty)
    warnings: list[str] = field(default_factory=list)  # counted, named problems that did not stop the scan


def scan(source: Source) -> Layout:
    """Find the images, their class folders and the labels CSV; fail with one clear message on bad layouts."""
    csvs = [f for f in source.files if PurePosixPath(f).name.lower() == LABELS_CSV]
    csv_path = min(csvs, key=lambda f: (f.count("/"), f)) if csvs else None
    paths, folder_labels, ignored = [], [], list(source.ignored)
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
    if source.ignored:
        layout.warnings.append(f"ignored {len(source.ignored)} special files or symlink loops (named pipes, "
                               f"sockets, devices): {_sample(source.ignored)}")  # fmt: skip
    if csv_path is not None:
        try:
            _read_labels_csv(source, csv_path, layout)
        except EmodetectError as exc:  # only a caller that asks for CSV labels is stopped by it
            layout.csv_error = str(exc)
            layout.csv_labels, layout.relfcs, layout.n_csv_rows, layout.csv_rows_without_image = {}, {}, 0, 0
            layout.warnings.append(f"labels.csv ignored: {exc}")
    return layout


def _normalise_csv_path(raw: str) -> tuple[str, bool]:
    """A CSV path in posix form without a leading './'; the flag says whether it had to be changed."""
    path = raw.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path, path != raw


def _sample(names, k: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:k]) + (" ..." if len(names) > k else "")


def _read_labels_csv(source: Source, csv_path: str, layout: Layout) -> None:
    root = PurePosixPath(csv_path).parent
    try:
        raw = source.read(csv_path, max_bytes=MAX_CSV_BYTES)
        text = raw.decode("utf-8-sig")
    except UnreadableFile as exc:
        raise EmodetectError(f"cannot read {csv_path}: {exc}") from None
    except UnicodeDecodeError:
        raise EmodetectError(f"malformed {csv_path}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header is None:
            raise EmodetectError(f"malformed {csv_path}: the file is empty")
        cols = {name.strip(): i for i, name in enumerate(header)}
        if "pth" not in cols or "label" not in cols:
            raise EmodetectError(f"malformed {csv_path}: needs columns 'pth' and 'label', found {header[:10]}")
        i_pth, i_label, i_rel = cols["pth"], cols["label"], cols.get("relFCs")
        known = set(layout.paths)
        n_rows, missing, changed = 0, [], 0
        seen: dict[str, str] = {}
        conflicts: set[str] = set()
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            n_rows += 1
            if len(row) != len(header):
                raise EmodetectError(f"malformed {csv_path}: line {line_no} has {len(row)} fields, header has {len(header)}")
            label = canonical_label(row[i_label])
            if label is None:
                raise EmodetectError(f"malformed {csv_path}: line {line_no} has unknown label {row[i_label][:40]!r}")
            rel, was_changed = _normalise_csv_path(row[i_pth])
            changed += was_changed
            path = str(root / rel) if str(root) != "." else rel
            if path not in known:
                missing.append(path[:120])
                continue
            if path in seen and seen[path] != label:
                conflicts.add(path)
            seen[path] = label
            layout.csv_labels[path] = label
            if i_rel is not None and row[i_rel].strip():
                try:
                    value = float(row[i_rel])
                except ValueError:
                    raise EmodetectError(f"malformed {csv_path}: line {line_no} has relFCs {row[i_rel][:40]!r}") from None
                if not math.isfinite(value):
                    raise EmodetectError(f"malformed {csv_path}: line {line_no} has relFCs {row[i_rel]!r}")
                layout.relfcs[path] = value
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit(), a NUL byte
        raise EmodetectError(f"malformed {csv_path}: line {reader.line_num}: {exc}") from None
    for path in conflicts:  # contradictory rows: no CSV label is better than a guessed one
        layout.csv_labels.pop(path, None)
        layout.relfcs.pop(path, None)
    layout.n_csv_rows = n_rows
    layout.csv_rows_without_image = len(missing)
    if conflicts:
        layout.warnings.append(f"{csv_path}: {len(conflicts)} images have rows with different labels; their CSV "
                               f"label is left out: {_sample(conflicts)}")  # fmt: skip
    if missing:
        layout.warnings.append(f"{csv_path}: {len(missing)} rows name no image of the dataset: {_sample(missing)}")
    if changed:
        layout.warnings.append(f"{csv_path}: {changed} paths written with './' or backslashes were normalised")
