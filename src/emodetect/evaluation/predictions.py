"""`predictions.csv`: one row per evaluated image (split, source dataset, path, true and predicted class,
probabilities). Runs write it; ensembles and the study report read it. No pixels are stored."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from emodetect.errors import EmodetectError
from emodetect.files import atomic_write
from emodetect.labels import CLASSES, labels_to_indices

COLUMNS = ("split", "source", "path", "true", "pred", *CLASSES)


def write_predictions(path: str | Path, splits: dict, proba: dict[str, np.ndarray]) -> Path:
    """splits: name -> Dataset; proba: name -> (N, K) probabilities in CLASSES order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for name, ds in splits.items():
        for src, p, t, row in zip(ds.sources, ds.paths, ds.labels, proba[name]):
            w.writerow([name, src, p, CLASSES[t], CLASSES[int(row.argmax())], *(f"{v:.5f}" for v in row)])
    return atomic_write(path, buf.getvalue())


def read_predictions(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """split -> {"source", "path", "label" (indices), "proba" (N, K)} from a predictions.csv."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.csv"
    if not path.is_file():
        raise EmodetectError(f"no predictions file at {path}")
    rows: dict[str, list] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["split"], []).append(r)
    return {s: {"source": np.array([r.get("source", "") for r in rs], dtype=object),
                "path": np.array([r["path"] for r in rs], dtype=object),
                "label": labels_to_indices([r["true"] for r in rs]),
                "proba": np.array([[float(r[c]) for c in CLASSES] for r in rs])}
            for s, rs in rows.items()}  # fmt: skip
