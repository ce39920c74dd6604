"""Robustness: accuracy under fixed corruptions of the evaluation images, in the spirit of ImageNet-C.

Grayscale, 48 px low resolution, JPEG quality 30, blur, noise, +-15 degree rotation and off-centre framing
(`emodetect.data.transforms.CORRUPTIONS`), each applied to every image; numbers only.
"""

from __future__ import annotations

import numpy as np

from emodetect.data.dataset import Dataset
from emodetect.data.transforms import CORRUPTIONS, corrupt
from emodetect.evaluation.metrics import accuracy_by, classification_metrics


def _summary(ds: Dataset, proba: np.ndarray) -> dict:
    pred = proba.argmax(1)
    m = classification_metrics(ds.labels, pred)
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "n_images": m["n_images"], "by_source": accuracy_by(pred == ds.labels, ds.sources)}  # fmt: skip


def robustness(predictor, ds: Dataset, corruptions=tuple(CORRUPTIONS), clean: np.ndarray | None = None) -> dict:
    """{"clean": ..., corruption: ...}: accuracy, balanced accuracy, macro-F1 and accuracy per source dataset
    of `predictor` on `ds` as it is and under each corruption. `clean`: its probabilities, if already known."""
    out = {"clean": _summary(ds, predictor.predict_proba(ds.images) if clean is None else clean)}
    for name in corruptions:
        out[name] = _summary(ds, predictor.predict_proba(corrupt(ds.images, name)))
    return out
