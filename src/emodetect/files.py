"""Files written whole or not at all, and JSON read without surprises: the one home for both.

Every file the package writes (cache, manifests, artifacts, checkpoints, reports' JSON) goes through
`atomic_write`: the bytes land in a temporary file beside the target, are flushed to disk, and are renamed
into place, so a reader (or a run killed half-way) sees the old file or the new one, never a torn one.
Temporary names carry the writer's process id, so `remove_stale_temp_files` can clean up after a killed
writer without touching a live one's.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

_TMP = re.compile(r"^\..+\.tmp-(\d+)$")


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write `data` (bytes, text, or a function that writes into a binary file object) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # the write failed part-way: leave nothing behind
            tmp.unlink()
    return path


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def to_json(obj, indent: int | None = 1) -> str:
    """JSON text of plain data, numpy scalars and arrays, and paths."""
    return json.dumps(obj, indent=indent, default=_json_default)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    return atomic_write(path, to_json(obj, indent))


def is_regular_file(path: str | os.PathLike) -> bool:
    """A regular file (links followed): never a folder, pipe, socket or device, which could hang a reader."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes; OSError (with the reason) for anything else.

    Opened without blocking and checked on the open handle: a named pipe, a device such as /dev/zero or a
    /proc file that blocks on read is refused, never read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise OSError(f"{path} has {st.st_size:,} bytes, over the limit of {max_bytes:,}")
        if st.st_size == 0:  # nothing to read (and /proc files that report 0 may block)
            return b""
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(f"{path} grew beyond the limit of {max_bytes:,} bytes")
    return data


def read_json(path: str | os.PathLike, max_bytes: int = 64 * 1024 * 1024):
    """The JSON value in `path`, or None when the file is missing, not a regular file, oversized or not JSON."""
    try:
        return json.loads(read_regular(path, max_bytes))
    except (OSError, ValueError, RecursionError):
        return None


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files in `folder` left by writers that no longer run (a killed ingest or training)."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22  # exists but belongs to someone else; absurd pids are not alive
    return True
