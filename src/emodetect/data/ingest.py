"""Ingest: source (zip or folder) -> decoded image cache + manifest + stored split -> `Dataset`.

Cache layout, one folder per source content (``<cache>/<fingerprint>-v<version>/``):

- ``manifest.csv``: one row per readable image (path, both labels, relFCs, format, duplicate groups)
- ``images-<mode>-<size>.npy``: uint8 pixels in manifest order, one file per colour mode and size
- ``split-<seed>-<fractions>.npy``: the stored train/val/test assignment (int8)
- ``index.json``: written last; without it (a killed ingest) the folder is rebuilt, never loaded

Every file is written under a temporary name and renamed into place, so a reader sees a whole file or none.
Label source and relFCs ceiling are row filters applied at load time, so every setting shares one split.
The duplicate search (needed only to split) runs on first use of a split: a dataset that is only evaluated
never pays for it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from emodetect.data import dedup
from emodetect.data.dataset import Dataset, DataSource, concat, parse_sources
from emodetect.data.decode import COLOR_MODES, UnreadableImage, convert_color, decode_rgb, sniff_format, to_square
from emodetect.data.source import Layout, Source, UnreadableFile, scan
from emodetect.data.split import make_split
from emodetect.errors import EmodetectError
from emodetect.files import (
    atomic_save_npy,
    atomic_write,
    is_regular_file,
    read_json,
    read_regular,
    remove_stale_temp_files,  # fmt: skip
    write_json,
)
from emodetect.labels import CLASSES, labels_to_indices

CACHE_VERSION = 1
LABEL_SOURCES = ("folder", "csv")
DEFAULT_SIZE = 96
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEDUP_SIZE = 96  # the duplicate search always looks at 96x96 grayscale, whatever size a caller loads
MANIFEST_COLUMNS = (
    "path", "folder_label", "csv_label", "relfcs", "format", "width", "height", "sha1", "exact_group", "dup_group",
)  # fmt: skip


def default_cache_dir() -> Path:
    if os.environ.get("EMODETECT_CACHE"):
        return Path(os.environ["EMODETECT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emodetect"


def load_dataset(
    data: str | os.PathLike,
    *,
    mode: str = "gray",
    size: int = DEFAULT_SIZE,
    label_source: str = "folder",
    relfcs_max: float | None = None,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    split: bool = True,
    name: str | None = None,
) -> Dataset:
    """Load a dataset in the Kaggle class-folder layout, ingesting it into the cache on first use.

    mode: ``"gray"`` (as in the study) or ``"rgb"`` (for pretrained backbones); images are resized to
    ``size`` x ``size``. label_source: ``"folder"`` (default; every image has one) or ``"csv"`` (the
    ``labels.csv`` re-labelling; images without a row are dropped and counted). relfcs_max: drop images whose
    relFCs (share of the first principal component: high means flat, low-detail) is above this ceiling.
    split: False when the dataset is only evaluated: no duplicate search is run for it, and rows without a
    stored split get -1. name: the dataset's name in the ``source`` column (default: the file name).
    """
    if mode not in COLOR_MODES:
        raise EmodetectError(f"unknown colour mode {mode!r}; expected one of {', '.join(COLOR_MODES)}")
    if label_source not in LABEL_SOURCES:
        raise EmodetectError(f"unknown label source {label_source!r}; expected one of {', '.join(LABEL_SOURCES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise EmodetectError(f"the split seed must be a whole number >= 0, got {seed!r}")
    if not isinstance(size, int) or not 8 <= size <= 1024:
        raise EmodetectError(f"the image size must be a whole number from 8 to 1024, got {size!r}")
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise EmodetectError(f"split fractions must be three numbers >= 0 that sum to 1, got {fractions}")
    t0 = time.perf_counter()
    folder, index, manifest, images, built = _open_cache(data, cache_dir, mode, size, split, progress)
    split_key, assigned = _stored_split(folder, index, manifest, seed, fractions)
    keep, labels, dropped = _filter_rows(manifest, index, label_source, relfcs_max, data)
    name = name or DataSource.parse(data).name
    manifest["source"] = np.full(len(labels), name, dtype=object)
    info = {
        "name": name,
        "source": str(Path(data)),
        "fingerprint": index["fingerprint"],
        "dataset_id": f"{split_key or index['fingerprint'][:24]}/{label_source}/relfcs<={relfcs_max}",
        "split_id": split_key,
        "mode": mode,
        "size": size,
        "label_source": label_source,
        "relfcs_max": relfcs_max,
        "seed": seed,
        "fractions": list(fractions),
        "n_readable": len(keep),
        **dropped,
        "unreadable": index["unreadable"],
        "unreadable_reasons": index.get("unreadable_reasons", {}),
        "warnings": index.get("warnings", []),
        "n_ignored_files": index["n_ignored_files"],
        "n_csv_rows_without_image": index["n_csv_rows_without_image"],
        "dedup": index.get("dedup_stats", {}),
        "cache": str(folder),
        "from_cache": not built,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    dataset = Dataset(images=images, labels=labels, split=assigned, manifest=manifest, info=info)
    return dataset if keep.all() else dataset.subset(keep)  # no 200 MB copy when nothing is filtered


def _open_cache(data, cache_dir, mode: str, size: int, split: bool, progress: bool):
    """(folder, index, manifest, images, built): the cache of `data`, built or completed as needed."""
    source = Source(data)
    try:
        fingerprint = source.fingerprint()
        folder = _cache_folder(cache_dir, fingerprint)
        remove_stale_temp_files(folder)  # left by a writer that was killed
        index = _read_index(folder / "index.json")
        manifest = _read_manifest(folder / "manifest.csv", index["n_images"]) if index else None
        images_file = folder / f"images-{mode}-{size}.npy"
        built = manifest is None  # no index, or a missing or damaged manifest: build the cache again
        if built:
            index, images = _build(source, folder, fingerprint, mode, size, progress, find_duplicates=split)
            manifest = _read_manifest(folder / "manifest.csv", index["n_images"])
        else:
            images = _load_array(images_file, len(manifest["path"]), _image_shape(mode, size))
            if images is None:
                images = _decode_cached(source, manifest["path"], mode, size, progress)
                atomic_save_npy(images_file, images)
        if split and not index.get("dedup", True):  # built for evaluation only: search duplicates now
            index, manifest = _add_duplicate_groups(source, folder, index, manifest, progress)
    finally:
        source.close()
    return folder, index, manifest, images, built


def _stored_split(folder: Path, index: dict, manifest: dict, seed: int, fractions) -> tuple[str | None, np.ndarray]:
    """(split id, (N,) int8 split) made once and stored; -1 everywhere when no duplicate search has run."""
    if not index.get("dedup", True):
        return None, np.full(len(manifest["path"]), -1, np.int8)
    split_file = folder / f"split-{seed}-{'-'.join(f'{f:g}' for f in fractions)}.npy"
    assigned = _load_split(split_file, len(manifest["path"]))
    if assigned is None:
        assigned = make_split(labels_to_indices(manifest["folder_label"]), manifest["dup_group"], fractions, seed)
        atomic_save_npy(split_file, assigned)
    return f"{index['fingerprint'][:24]}/{split_file.stem}", assigned


def _filter_rows(manifest: dict, index: dict, label_source: str, relfcs_max, data):
    """(rows to keep, labels, counts of dropped rows) for a label source and a relFCs ceiling."""
    keep = np.ones(len(manifest["path"]), bool)
    n_no_csv = n_relfcs = 0
    if label_source == "csv":
        if index.get("csv_error"):
            raise EmodetectError(f"label source 'csv' cannot be used: {index['csv_error']}")
        has_csv = manifest["csv_label"] != ""
        if not has_csv.any():
            raise EmodetectError(f"label source 'csv' needs a labels.csv with rows for the images in {data}")
        n_no_csv = int((~has_csv).sum())
        keep &= has_csv
    if relfcs_max is not None:
        too_flat = manifest["relfcs"] > relfcs_max  # NaN (no CSV row) compares False: kept, nothing to judge by
        n_relfcs = int((too_flat & keep).sum())
        keep &= ~too_flat
    if not keep.any():
        raise EmodetectError(f"no images left after the filters (relFCs <= {relfcs_max}, labels: {label_source})")
    labels = labels_to_indices(manifest["folder_label" if label_source == "folder" else "csv_label"])
    return keep, labels, {"n_dropped_no_csv_row": n_no_csv, "n_dropped_relfcs": n_relfcs}


def load_datasets(data, **kwargs) -> Dataset:
    """Several datasets as one (each ``PATH`` or ``NAME=PATH``; one alone is just `load_dataset`).

    Each keeps its own cache and stored split; the ``source`` column says which dataset a row comes from.
    Keyword arguments are those of `load_dataset` and apply to every dataset.
    """
    return concat([load_dataset(s.path, name=s.name, **kwargs) for s in parse_sources(data)])


# --------------------------------------------------------------------------------------------- building


def _cache_folder(cache_dir, fingerprint: str) -> Path:
    folder = Path(cache_dir or default_cache_dir()) / f"{fingerprint[:24]}-v{CACHE_VERSION}"
    if folder.exists() and not folder.is_dir():
        raise EmodetectError(f"cache folder {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise EmodetectError(f"cannot use {folder.parent} as the cache folder: a file is in the way") from None
    except OSError as exc:
        raise EmodetectError(f"cannot create the cache folder {folder}: {exc.strerror or exc}") from None
    _clear_foreign_entries(folder)
    return folder


_CACHE_FILES = re.compile(r"^(index\.json|manifest\.csv|images-\w+-\d+\.npy|split-.*\.npy)$")


def _clear_foreign_entries(folder: Path) -> None:
    """The cache folder is ours: a folder, pipe, device or link where one of our files belongs is damage, removed."""
    for entry in folder.iterdir():
        if _CACHE_FILES.match(entry.name) and (entry.is_symlink() or not is_regular_file(entry)):
            try:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            except OSError as exc:
                raise EmodetectError(f"cache file {entry} is damaged and cannot be removed: {exc.strerror}") from None


def _build(source: Source, folder: Path, fingerprint: str, mode: str, size: int, progress: bool,
           find_duplicates: bool = True):  # fmt: skip
    t0 = time.perf_counter()
    layout = scan(source)
    images, gray, extra = _decode_all(source, layout.paths, mode, size, progress, gray96=find_duplicates)
    ok = extra["ok"]
    reasons = {p: r for p, r, good in zip(layout.paths, extra["reason"], ok) if not good}
    if not ok.any():
        sample = "; ".join(f"{p}: {r}" for p, r in list(reasons.items())[:3])
        raise EmodetectError(f"no readable images in {source.path} ({len(reasons)} files failed: {sample})")
    images = images[ok]
    manifest = _make_manifest(layout, ok, extra)
    t_dedup = time.perf_counter()
    stats = {}
    if find_duplicates:
        gray = gray[ok]
        manifest["exact_group"], manifest["dup_group"] = dedup.find_groups(gray, list(manifest["sha1"]), stats=stats)
        if not (mode == "gray" and size == DEDUP_SIZE):
            atomic_save_npy(folder / f"images-gray-{DEDUP_SIZE}.npy", gray)
    atomic_save_npy(folder / f"images-{mode}-{size}.npy", images)
    _write_manifest(folder / "manifest.csv", manifest)
    index = {
        "version": CACHE_VERSION,
        "source": str(source.path),
        "kind": source.kind,
        "fingerprint": fingerprint,
        "n_images": int(ok.sum()),
        "dedup": find_duplicates,
        "dedup_stats": stats,
        "unreadable": list(reasons),
        "unreadable_reasons": reasons,
        "warnings": layout.warnings,
        "n_ignored_files": len(layout.ignored_files),
        "ignored_files_sample": layout.ignored_files[:20],
        "csv": layout.csv_path,
        "csv_error": layout.csv_error,
        "n_csv_rows": layout.n_csv_rows,
        "n_csv_rows_without_image": layout.csv_rows_without_image,
        "folder_names": layout.folder_names,
        "seconds_decode": round(t_dedup - t0, 2),
        "seconds_dedup": round(time.perf_counter() - t_dedup, 2),
    }
    write_json(folder / "index.json", index)  # written last: its presence marks a complete cache
    return index, images


def _add_duplicate_groups(source: Source, folder: Path, index: dict, manifest: dict, progress: bool):
    """Run the duplicate search on a cache that was built without it, and record the groups."""
    t0 = time.perf_counter()
    gray_file = folder / f"images-gray-{DEDUP_SIZE}.npy"
    gray = _load_array(gray_file, len(manifest["path"]), _image_shape("gray", DEDUP_SIZE))
    if gray is None:
        gray = _decode_cached(source, manifest["path"], "gray", DEDUP_SIZE, progress)
        atomic_save_npy(gray_file, gray)
    stats = {}
    manifest["exact_group"], manifest["dup_group"] = dedup.find_groups(gray, list(manifest["sha1"]), stats=stats)
    _write_manifest(folder / "manifest.csv", manifest)
    index = {**index, "dedup": True, "dedup_stats": stats, "seconds_dedup": round(time.perf_counter() - t0, 2)}
    write_json(folder / "index.json", index)
    return index, manifest


def _decode_cached(source: Source, paths, mode: str, size: int, progress: bool) -> np.ndarray:
    """The images of a cached manifest in another mode or size; every one of them decoded before."""
    images, _, extra = _decode_all(source, paths, mode, size, progress)
    if not extra["ok"].all():
        raise EmodetectError(f"{(~extra['ok']).sum()} images in the cache manifest no longer decode; the source changed")
    return images


def _decode_all(source: Source, paths, mode: str, size: int, progress: bool, gray96: bool = False,
                chunk: int = 1024, chunk_bytes: int = 256 << 20):  # fmt: skip
    """Read every file (in order) and decode it on a thread pool; OpenCV releases the GIL while decoding.

    Returns (images, gray, extra): `gray` holds the 96x96 grayscale copies that the duplicate search needs
    when `gray96` (the images themselves when they are that already), else None. Files are read in chunks
    of at most `chunk` files and `chunk_bytes` bytes, so memory stays bounded whatever the files' sizes. A
    file that cannot be read or decoded is marked in `extra["ok"]`, with its reason.
    """
    n = len(paths)
    images = np.zeros((n, size, size) if mode == "gray" else (n, size, size, 3), np.uint8)
    same = mode == "gray" and size == DEDUP_SIZE
    gray = (images if same else np.zeros((n, DEDUP_SIZE, DEDUP_SIZE), np.uint8)) if gray96 else None
    ok = np.zeros(n, bool)
    sha1, fmt, reason = [""] * n, [""] * n, [""] * n
    width, height = np.zeros(n, int), np.zeros(n, int)

    def work(i_data):
        i, data = i_data
        if isinstance(data, UnreadableFile):
            reason[i] = str(data)
            return
        fmt[i] = sniff_format(data)
        sha1[i] = hashlib.sha1(data).hexdigest()
        try:
            rgb = decode_rgb(data)
        except UnreadableImage as exc:
            reason[i] = str(exc)
            return
        height[i], width[i] = rgb.shape[:2]
        images[i] = convert_color(to_square(rgb, size), mode)
        if gray is not None and gray is not images:
            gray[i] = convert_color(to_square(rgb, DEDUP_SIZE), "gray")
        ok[i] = True

    def read(i):
        try:
            return i, source.read(paths[i])
        except UnreadableFile as exc:
            return i, exc

    bar = tqdm(total=n, desc="decoding", unit="img", disable=not progress or None, leave=False)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        i = 0
        while i < n:
            batch, n_bytes = [], 0
            while i < n and len(batch) < chunk and n_bytes < chunk_bytes:
                batch.append(read(i))
                n_bytes += len(batch[-1][1]) if isinstance(batch[-1][1], bytes) else 0
                i += 1
            list(pool.map(work, batch))
            bar.update(len(batch))
    bar.close()
    extra = {"ok": ok, "sha1": sha1, "format": fmt, "width": width, "height": height, "reason": reason}
    return images, gray, extra


def _make_manifest(layout: Layout, ok, extra) -> dict[str, np.ndarray]:
    """The manifest of the readable images; duplicate groups are -1 until the duplicate search runs."""
    idx = np.nonzero(ok)[0]
    paths = [layout.paths[i] for i in idx]
    return {
        "path": np.array(paths, dtype=object),
        "folder_label": np.array([layout.folder_labels[i] for i in idx], dtype=object),
        "csv_label": np.array([layout.csv_labels.get(p, "") for p in paths], dtype=object),
        "relfcs": np.array([layout.relfcs.get(p, np.nan) for p in paths], float),
        "format": np.array([extra["format"][i] for i in idx], dtype=object),
        "width": extra["width"][idx],
        "height": extra["height"][idx],
        "sha1": np.array([extra["sha1"][i] for i in idx], dtype=object),
        "exact_group": np.full(len(idx), -1, int),
        "dup_group": np.full(len(idx), -1, int),
    }


# ------------------------------------------------------------------------------------------------ files


def _load_array(path: Path, n: int, shape: tuple | None = None, dtype=np.uint8) -> np.ndarray | None:
    """A cached array of n rows (each of `shape`, of `dtype`), or None when it is missing, damaged or not a
    regular file (the cache is then rebuilt: a pipe or a device in its place is never read)."""
    if not is_regular_file(path):
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if len(array) != n or array.dtype != dtype or (shape is not None and array.shape[1:] != shape):
        return None
    return array


def _image_shape(mode: str, size: int) -> tuple:
    return (size, size) if mode == "gray" else (size, size, 3)


def _load_split(path: Path, n: int) -> np.ndarray | None:
    split = _load_array(path, n, (), np.int8)
    return split if split is not None and np.isin(split, (0, 1, 2)).all() else None


_INDEX_TYPES = {"n_images": int, "unreadable": list, "n_ignored_files": int, "n_csv_rows_without_image": int,
                "fingerprint": str}  # fmt: skip


def _read_index(path: Path) -> dict | None:
    """The cache's index, or None when it is missing or damaged (wrong version or field types)."""
    index = read_json(path)
    if not isinstance(index, dict) or index.get("version") != CACHE_VERSION:
        return None
    if not all(isinstance(index.get(k), t) and not isinstance(index.get(k), bool) for k, t in _INDEX_TYPES.items()):
        return None
    if not isinstance(index.get("warnings", []), list) or not isinstance(index.get("unreadable_reasons", {}), dict):
        return None
    return index


_INT_COLUMNS = ("width", "height", "exact_group", "dup_group")


def _write_manifest(path: Path, manifest: dict[str, np.ndarray]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in zip(*(manifest[c] for c in MANIFEST_COLUMNS)):
        writer.writerow("" if isinstance(v, float) and np.isnan(v) else v for v in row)
    atomic_write(path, buf.getvalue())


def _read_manifest(path: Path, n_rows: int) -> dict[str, np.ndarray] | None:
    """The cached manifest, or None when it is missing, truncated or damaged (the cache is then rebuilt)."""
    try:
        reader = csv.reader(io.StringIO(read_regular(path, 1 << 30).decode("utf-8"), newline=""))
        header = next(reader)
        columns = list(zip(*reader))
        if tuple(header) != MANIFEST_COLUMNS or not columns or len(columns[0]) != n_rows:
            return None
        out = {}
        for name, values in zip(header, columns):
            if name in _INT_COLUMNS:
                out[name] = np.array(values, int)
            elif name == "relfcs":
                out[name] = np.array([float(v) if v else np.nan for v in values])
            else:
                out[name] = np.array(values, dtype=object)
        known = set(CLASSES)
        if not set(out["folder_label"]) <= known or not set(out["csv_label"]) <= known | {""}:
            return None
        return out
    except (OSError, ValueError, StopIteration, csv.Error, KeyError):
        return None
