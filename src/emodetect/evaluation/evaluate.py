"""Scoring a model on datasets: metrics overall, per source dataset and per file format, and probabilities."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from emodetect.data.dataset import Dataset
from emodetect.evaluation.metrics import accuracy_by, accuracy_by_within_class, classification_metrics
from emodetect.models.predict import Predictor


@dataclass
class Evaluation:
    """What scoring a model on some splits gives: metrics per split, the probabilities, inference speed."""

    metrics: dict[str, dict]  # split -> classification_metrics + "by_source" (each with its formats) + "by_format"
    proba: dict[str, np.ndarray]  # split -> (N, K) calibrated probabilities in CLASSES order
    images_per_second: float | None = None


def split_metrics(ds: Dataset, proba: np.ndarray) -> dict:
    """Classification metrics of one split, plus accuracy per file format and per source dataset; per source also
    accuracy per file format, overall and within each class that has two formats (at least 10 images each), since
    formats mean different things in different datasets."""
    pred = proba.argmax(1)
    m = classification_metrics(ds.labels, pred)
    correct = pred == ds.labels
    formats, sources = np.asarray(ds.manifest["format"]), ds.sources
    m["by_format"] = accuracy_by(correct, formats)
    m["by_source"] = {}
    for s in dict.fromkeys(sources.tolist()):
        sel = sources == s
        m["by_source"][s] = {**classification_metrics(ds.labels[sel], pred[sel]),
                             "by_format": accuracy_by(correct[sel], formats[sel]),
                             "by_format_within_class": accuracy_by_within_class(correct[sel], ds.labels[sel], formats[sel])}  # fmt: skip
    return m


def evaluate(predictor: Predictor, splits: dict[str, Dataset], speed_images: int | None = 512) -> Evaluation:
    """Score `predictor` on each split (through its own preprocessing) and time it on `speed_images` faces."""
    proba = {name: predictor.predict_proba(ds.images) for name, ds in splits.items()}
    metrics = {name: split_metrics(ds, proba[name]) for name, ds in splits.items()}
    speed = None
    if speed_images:
        images = next(iter(splits.values())).images
        sample = np.resize(images, (speed_images, *images.shape[1:]))  # repeats small splits to a fixed count
        predictor.predict(sample[:64])  # warm-up: first calls allocate and pick kernels
        t0 = time.perf_counter()
        predictor.predict(sample)
        speed = len(sample) / (time.perf_counter() - t0)
    return Evaluation(metrics, proba, speed)
