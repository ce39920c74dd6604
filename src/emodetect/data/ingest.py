"""Ingest: source (zip or folder) -> decoded image cache + manifest + stored split -> `Dataset`.

Cache layout, one folder per source content (``<cache>/<fingerprint>-v<version>/``):

- ``manifest.csv``: one row per readable image (path, both labels, relFCs, format, duplicate groups)
- ``images-<mode>-<size>.npy``: uint8 pixels in manifest order, one file per colour mode and size
- ``split-<seed>-<fractions>.npy``: the stored train/val/test assignment (int8)
- ``index.json``: written last; without it (a killed ingest) the folder is rebuilt, never loaded

Every file is written under a temporary name and renamed into place, so a reader sees a whole file or none.
Label source and relFCs ceiling are row filters applied at load time, so every setting shares one split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from emodetect.data import dedup
from emodetect.data.decode import COLOR_MODES, UnreadableImage, convert_color, decode_rgb, sniff_format, to_square
from emodetect.data.source import Layout, Source, UnreadableFile, scan
from emodetect.data.split import SPLITS, make_split
from emodetect.errors import EmodetectError
from emodetect.files import atomic_save_npy, atomic_write, read_json, remove_stale_temp_files, write_json
from emodetect.labels import CLASSES

CACHE_VERSION = 1
LABEL_SOURCES = ("folder", "csv")
DEFAULT_SIZE = 96
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
MANIFEST_COLUMNS = (
    "path", "folder_label", "csv_label", "relfcs", "format", "width", "height", "sha1", "exact_group", "dup_group",
)  # fmt: skip


def default_cache_dir() -> Path:
    if os.environ.get("EMODETECT_CACHE"):
        return Path(os.environ["EMODETECT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emodetect"


@dataclass
class Dataset:
    """Decoded images with labels and the stored split. Rows follow the manifest order."""

    images: np.ndarray  # (N, S, S) gray or (N, S, S, 3) rgb, uint8
    labels: np.ndarray  # (N,) int64 index into CLASSES
    split: np.ndarray  # (N,) int8 index into SPLITS
    manifest: dict[str, np.ndarray]  # per-row columns, MANIFEST_COLUMNS
    info: dict = field(default_factory=dict)
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def paths(self) -> np.ndarray:
        return self.manifest["path"]

    @property
    def mode(self) -> str:
        return "gray" if self.images.ndim == 3 else "rgb"

    def subset(self, which: str | np.ndarray) -> Dataset:
        """Rows of one split (``"train"``, ``"val"``, ``"test"``) or of a boolean/index array."""
        if isinstance(which, str):
            if which not in SPLITS:
                raise ValueError(f"unknown split {which!r}; expected one of {SPLITS}")
            which = self.split == SPLITS.index(which)
        return replace(
            self,
            images=self.images[which],
            labels=self.labels[which],
            split=self.split[which],
            manifest={k: v[which] for k, v in self.manifest.items()},
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


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
) -> Dataset:
    """Load a dataset in the Kaggle class-folder layout, ingesting it into the cache on first use.

    mode: ``"gray"`` (as in the study) or ``"rgb"`` (for pretrained backbones); images are resized to
    ``size`` x ``size``. label_source: ``"folder"`` (default; every image has one) or ``"csv"`` (the
    ``labels.csv`` re-labelling; images without a row are dropped and counted). relfcs_max: drop images whose
    relFCs (share of the first principal component: high means flat, low-detail) is above this ceiling.
    """
    if mode not in COLOR_MODES:
        raise EmodetectError(f"unknown colour mode {mode!r}; expected one of {', '.join(COLOR_MODES)}")
    if label_source not in LABEL_SOURCES:
        raise EmodetectError(f"unknown label source {label_source!r}; expected one of {', '.join(LABEL_SOURCES)}")
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise EmodetectError(f"split fractions must be three numbers >= 0 that sum to 1, got {fractions}")
    t0 = time.perf_counter()
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
            index, images = _build(source, folder, fingerprint, mode, size, progress)
            manifest = _read_manifest(folder / "manifest.csv", index["n_images"])
        else:
            images = _load_array(images_file, len(manifest["path"]))
            if images is None:
                images, _ = _decode_all(source, manifest["path"], mode, size, progress, want_gray=False)
                atomic_save_npy(images_file, images)
    finally:
        source.close()

    split_file = folder / f"split-{seed}-{'-'.join(f'{f:g}' for f in fractions)}.npy"
    split = _load_array(split_file, len(manifest["path"]))
    if split is None:
        strata = np.array([CLASSES.index(c) for c in manifest["folder_label"]])
        split = make_split(strata, manifest["dup_group"], fractions, seed)
        atomic_save_npy(split_file, split)

    keep = np.ones(len(split), bool)
    if label_source == "csv":
        if index.get("csv_error"):
            raise EmodetectError(f"label source 'csv' cannot be used: {index['csv_error']}")
        has_csv = manifest["csv_label"] != ""
        if not has_csv.any():
            raise EmodetectError(f"label source 'csv' needs a labels.csv with rows for the images in {data}")
        n_no_csv = int((~has_csv).sum())
        keep &= has_csv
    else:
        n_no_csv = 0
    if relfcs_max is not None:
        too_flat = manifest["relfcs"] > relfcs_max  # NaN (no CSV row) compares False: kept, nothing to judge by
        n_relfcs = int((too_flat & keep).sum())
        keep &= ~too_flat
    else:
        n_relfcs = 0
    label_column = manifest["folder_label" if label_source == "folder" else "csv_label"]
    lookup = {c: i for i, c in enumerate(CLASSES)} | {"": -1}
    labels = np.array([lookup[c] for c in label_column], np.int64)

    split_key = f"{fingerprint[:24]}/{split_file.stem}"
    info = {
        "source": str(Path(data)),
        "fingerprint": fingerprint,
        "dataset_id": f"{split_key}/{label_source}/relfcs<={relfcs_max}",
        "split_id": split_key,
        "mode": mode,
        "size": size,
        "label_source": label_source,
        "relfcs_max": relfcs_max,
        "seed": seed,
        "fractions": list(fractions),
        "n_readable": len(keep),
        "n_dropped_no_csv_row": n_no_csv,
        "n_dropped_relfcs": n_relfcs,
        "unreadable": index["unreadable"],
        "unreadable_reasons": index.get("unreadable_reasons", {}),
        "warnings": index.get("warnings", []),
        "n_ignored_files": index["n_ignored_files"],
        "n_csv_rows_without_image": index["n_csv_rows_without_image"],
        "cache": str(folder),
        "from_cache": not built,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if not keep.any():
        raise EmodetectError(f"no images left after the filters (relFCs <= {relfcs_max}, labels: {label_source})")
    dataset = Dataset(images=images, labels=labels, split=split, manifest=manifest, info=info)
    return dataset if keep.all() else dataset.subset(keep)  # no 200 MB copy when nothing is filtered


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
    return folder


def _build(source: Source, folder: Path, fingerprint: str, mode: str, size: int, progress: bool):
    t0 = time.perf_counter()
    layout = scan(source)
    images, gray, extra = _decode_all(source, layout.paths, mode, size, progress, want_gray=True)
    ok = extra["ok"]
    paths = [p for p, good in zip(layout.paths, ok) if good]
    reasons = {p: r for p, r, good in zip(layout.paths, extra["reason"], ok) if not good}
    if not paths:
        sample = "; ".join(f"{p}: {r}" for p, r in list(reasons.items())[:3])
        raise EmodetectError(f"no readable images in {source.path} ({len(reasons)} files failed: {sample})")
    digests = [d for d, good in zip(extra["sha1"], ok) if good]
    t_dedup = time.perf_counter()
    exact, near = dedup.find_groups(gray, digests)
    manifest = _make_manifest(layout, ok, extra, exact, near)
    atomic_save_npy(folder / f"images-{mode}-{size}.npy", images)
    _write_manifest(folder / "manifest.csv", manifest)
    index = {
        "version": CACHE_VERSION,
        "source": str(source.path),
        "kind": source.kind,
        "fingerprint": fingerprint,
        "n_images": len(paths),
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


def _decode_all(source: Source, paths, mode: str, size: int, progress: bool, want_gray: bool, chunk: int = 1024,
                chunk_bytes: int = 256 << 20):  # fmt: skip
    """Read every file (in order) and decode it on a thread pool; OpenCV releases the GIL while decoding.

    Files are read in chunks of at most `chunk` files and `chunk_bytes` bytes, so memory stays bounded
    whatever the files' sizes. A file that cannot be read or decoded is marked, with its reason.
    """
    n = len(paths)
    images = np.zeros((n, size, size) if mode == "gray" else (n, size, size, 3), np.uint8)
    gray = images if mode == "gray" or not want_gray else np.zeros((n, size, size), np.uint8)
    ok = np.zeros(n, bool)
    sha1, fmt, reason = [""] * n, [""] * n, [""] * n
    width, height = np.zeros(n, int), np.zeros(n, int)

    def work(i_data):
        i, data = i_data
        if isinstance(data, UnreadableFile):
            reason[i] = str(data)
            return
        fmt[i] = sniff_format(data)
        if want_gray:
            sha1[i] = hashlib.sha1(data).hexdigest()
        try:
            rgb = decode_rgb(data)
        except UnreadableImage as exc:
            reason[i] = str(exc)
            return
        height[i], width[i] = rgb.shape[:2]
        sq = to_square(rgb, size)
        images[i] = convert_color(sq, mode)
        if gray is not images:
            gray[i] = convert_color(sq, "gray")
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
    if want_gray:
        return images[ok], gray[ok], extra
    if not ok.all():
        raise EmodetectError(f"{(~ok).sum()} images in the cache manifest no longer decode; the source changed")
    return images, extra


def _make_manifest(layout: Layout, ok, extra, exact, near) -> dict[str, np.ndarray]:
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
        "exact_group": exact,
        "dup_group": near,
    }


# ------------------------------------------------------------------------------------------------ files


def _load_array(path: Path, n: int) -> np.ndarray | None:
    """A cached array with n rows, or None when it is missing, truncated or damaged."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return array if len(array) == n else None


def _read_index(path: Path) -> dict | None:
    index = read_json(path)
    ok = isinstance(index, dict) and index.get("version") == CACHE_VERSION and isinstance(index.get("n_images"), int)
    return index if ok else None


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
        with open(path, newline="") as f:
            reader = csv.reader(f)
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
        return out
    except (OSError, ValueError, StopIteration, csv.Error):
        return None
