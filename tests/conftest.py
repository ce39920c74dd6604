"""Shared fixtures: a tiny synthetic dataset in the Kaggle layout, built fresh by the tests themselves."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from emodetect.labels import CLASSES

REAL_ZIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "affectnet" / "affectnet-training-data.zip"
REAL_ZIP = REAL_ZIP.resolve()


@pytest.fixture(autouse=True, scope="session")
def _scratch_home(tmp_path_factory):
    """Keep every HOME-based cache (ours, torch inductor, onnxruntime, matplotlib) out of the real home."""
    scratch = tmp_path_factory.mktemp("home")
    keys = ("EMODETECT_CACHE", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["EMODETECT_CACHE"] = str(scratch / "emodetect")
    os.environ["XDG_CACHE_HOME"] = str(scratch / "cache")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
    os.environ["MPLCONFIGDIR"] = str(scratch / "mpl")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def synthetic_face(label: int, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """An RGB image whose class is learnable: a bright disc at a class-specific place on smooth random texture."""
    noise = rng.normal(0, 1, (12, 12, 3)).astype(np.float32)
    base = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    img = 110 + 25 * base
    angle = 2 * np.pi * label / len(CLASSES)
    cx, cy = size / 2 + size / 4 * np.cos(angle), size / 2 + size / 4 * np.sin(angle)
    yy, xx = np.mgrid[:size, :size]
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (size / 8) ** 2
    img[disc] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img_rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def make_dataset(root: Path, n_per_class: int = 6, seed: int = 0, classes=CLASSES, with_csv: bool = True,
                 extras: bool = False) -> dict:  # fmt: skip
    """Write ``<root>/<class>/<file>`` plus labels.csv; returns what was written, for the assertions.

    Class k uses JPEG for even k and PNG for odd k. The CSV relabels every third image to the next class,
    leaves the last image of each class without a row, and gives relFCs = 0.6 + 0.05 * (i % 6).
    With ``extras``: a truncated JPEG, a non-image file, a corrupt PNG, a byte-identical copy and a
    re-cropped, re-coloured copy of one image.
    """
    rng = np.random.default_rng(seed)
    rows, written = [], {}
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        k_canon = CLASSES.index(name) if name in CLASSES else k
        ext = ".jpg" if k % 2 == 0 else ".png"
        for i in range(n_per_class):
            img = synthetic_face(k_canon, rng)
            rel = f"{name}/img{k}_{i}{ext}"
            (root / rel).write_bytes(encode(img, ext))
            written[rel] = img
            if i < n_per_class - 1:
                csv_label = CLASSES[(k_canon + 1) % len(CLASSES)] if i % 3 == 0 else name
                rows.append(f"{len(rows)},{rel},{csv_label},{0.6 + 0.05 * (i % 6):.3f}")
    info = {"images": written, "n_csv_rows": len(rows)}
    if extras:
        first = next(iter(written))
        data = (root / first).read_bytes()
        cls = first.split("/")[0]
        (root / cls / "truncated.jpg").write_bytes(encode(written[first], ".jpg")[:400])
        (root / cls / "notes.txt").write_text("not an image")
        (root / cls / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20 + b"IEND\xaeB`\x82")
        (root / cls / "copy.jpg").write_bytes(data)
        img = written[first]
        crop = cv2.resize(img[3:93, 2:92], (96, 96), interpolation=cv2.INTER_LINEAR)
        recoloured = np.clip(crop.astype(np.float32) * 0.8 + 20, 0, 255).astype(np.uint8)
        (root / cls / "recrop.png").write_bytes(encode(recoloured, ".png"))
        info.update(first=first, unreadable={f"{cls}/truncated.jpg", f"{cls}/corrupt.png"},
                    copies={first, f"{cls}/copy.jpg", f"{cls}/recrop.png"})  # fmt: skip
    if with_csv:
        (root / "labels.csv").write_text(",pth,label,relFCs\n" + "\n".join(rows) + "\n")
    return info


def zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, prefix + p.relative_to(folder).as_posix())
    return target


@pytest.fixture
def tiny_folder(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "tiny"
    info = make_dataset(root, extras=True)
    return root, info


@pytest.fixture
def tiny_zip(tmp_path, tiny_folder) -> tuple[Path, dict]:
    root, info = tiny_folder
    return zip_folder(root, tmp_path / "tiny.zip"), info


@pytest.fixture(scope="session")
def real_zip() -> Path:
    if not REAL_ZIP.exists():
        pytest.skip(f"shared AffectNet zip not found at {REAL_ZIP}")
    return REAL_ZIP


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory, real_zip) -> Path:
    """One cache for every real-data test in the session (the first load ingests, ~40 s on 2 cores)."""
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(scope="session")
def real_gray(real_zip, real_cache):
    """The real zip, grayscale, folder labels: ingested once per session."""
    from emodetect.data import load_dataset

    return load_dataset(real_zip, cache_dir=real_cache, progress=False)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A learnable synthetic dataset (40 images per class), ingested: Dataset with a stored split."""
    from emodetect.data import load_dataset

    root = tmp_path_factory.mktemp("learnable")
    make_dataset(root / "data", n_per_class=40, seed=3)
    return load_dataset(root / "data", cache_dir=root / "cache", progress=False)


FER_ZIP = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fer2013" / "fer2013-train.zip").resolve()
FACES_ZIP = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "faces" / "faces.zip").resolve()


@pytest.fixture(scope="session")
def real_faces():
    """A few dozen real AffectNet validation-style crops (RGB 96x96) with their folder labels, read straight from
    the shared zip at test time (never written anywhere)."""
    if not REAL_ZIP.exists():
        pytest.skip(f"shared AffectNet zip not found at {REAL_ZIP}")
    from emodetect.data.decode import decode_rgb
    from emodetect.labels import label_to_index

    with zipfile.ZipFile(REAL_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg") and "/" in n)
        pick = [names[i] for i in np.random.default_rng(0).choice(len(names), 48, replace=False)]
        faces = np.stack([decode_rgb(z.read(n)) for n in pick])
    return faces, np.array([label_to_index(n.split("/")[0]) for n in pick])


@pytest.fixture(scope="session")
def real_fer_faces():
    """200 real FER2013 faces (48x48 gray JPEGs, as RGB) with their folder labels, read straight from the shared
    zip at test time (never written anywhere). Drawn from the whole zip: some are in the shipped models' train split."""
    if not FER_ZIP.exists():
        pytest.skip(f"shared FER2013 zip not found at {FER_ZIP}")
    from emodetect.data.decode import decode_rgb
    from emodetect.labels import label_to_index

    with zipfile.ZipFile(FER_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        pick = [names[i] for i in np.random.default_rng(0).choice(len(names), 200, replace=False)]
        faces = np.stack([decode_rgb(z.read(n)) for n in pick])
    return faces, np.array([label_to_index(n.split("/")[-2]) for n in pick])
