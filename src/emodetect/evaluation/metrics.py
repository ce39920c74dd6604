"""Classification metrics: numbers only, the same for every model in the project."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from emodetect.labels import CLASSES


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str] = CLASSES) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support and confusion matrices.

    Classes absent from y_true are left out of the per-class table and of the macro averages (a dataset
    without contempt is scored on its own classes); the confusion matrix covers every class that occurs
    in y_true or y_pred. Rows are true classes, columns predicted.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    present = np.unique(y_true)
    shown = np.union1d(present, np.unique(y_pred))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
    cm = skm.confusion_matrix(y_true, y_pred, labels=shown)
    return {
        "n_images": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean(r)) if len(r) else 0.0,
        "macro_f1": float(np.mean(f)) if len(f) else 0.0,
        "per_class": {
            classes[c]: {"precision": float(pi), "recall": float(ri), "f1": float(fi), "support": int(si)}
            for c, pi, ri, fi, si in zip(present, p, r, f, s)
        },
        "classes": [classes[c] for c in shown],
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": (cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)).round(4).tolist(),
    }


def most_confused_pairs(cm: np.ndarray, classes: Sequence[str], k: int = 3) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells: (true class, predicted class, count)."""
    cm = np.asarray(cm).copy()
    np.fill_diagonal(cm, 0)
    flat = np.argsort(cm, axis=None)[::-1][:k]
    return [(classes[i], classes[j], int(cm[i, j])) for i, j in zip(*np.unravel_index(flat, cm.shape)) if cm[i, j]]


def accuracy_by(correct: np.ndarray, keys: np.ndarray) -> dict:
    """Accuracy per value of `keys` (a file format, a source dataset): key -> {accuracy, n}."""
    correct, keys = np.asarray(correct, bool), np.asarray(keys)
    return {str(k): {"accuracy": float(correct[keys == k].mean()), "n": int((keys == k).sum())}
            for k in sorted(set(keys.tolist()))}  # fmt: skip


def accuracy_by_within_class(correct: np.ndarray, labels: np.ndarray, keys: np.ndarray, min_n: int = 10) -> dict:
    """Accuracy per value of `keys` within each class: class -> key -> {accuracy, n}, for the classes that have at
    least `min_n` images under two or more keys (only those keys are listed).

    Where the key goes with the class (in the AffectNet subset happy and neutral are nearly all PNG, anger, fear and
    sad all JPEG), the overall accuracy per key mostly measures which classes each key holds; within one class it
    measures what the key itself does to the model."""
    correct, labels, keys = np.asarray(correct, bool), np.asarray(labels), np.asarray(keys)
    out = {}
    for c in sorted(set(labels.tolist())):
        in_c = labels == c
        cells = {k: v for k, v in accuracy_by(correct[in_c], keys[in_c]).items() if v["n"] >= min_n}
        if len(cells) >= 2:
            out[CLASSES[c]] = cells
    return out
