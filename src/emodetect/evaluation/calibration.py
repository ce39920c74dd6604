"""Calibration: temperature scaling fitted on validation logits, expected calibration error, reliability bins."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T)."""
    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=(-3, 3), method="bounded")
    return float(np.exp(res.x))


def reliability(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict:
    """Confidence bins: mean confidence, accuracy and count per bin, and the expected calibration error."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    sum_conf = np.bincount(which, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / counts, np.nan)
        acc = np.where(counts > 0, sum_acc / counts, np.nan)
    ece = float(np.nansum(np.abs(acc - mean_conf) * counts) / max(1, counts.sum()))
    return {"ece": ece, "bin_edges": edges.tolist(), "confidence": mean_conf.tolist(), "accuracy": acc.tolist(),
            "count": counts.tolist()}  # fmt: skip


def calibrate(logits: np.ndarray, y: np.ndarray) -> dict:
    """Temperature scaling fitted on (validation) logits, with reliability before and after."""
    from scipy.special import softmax

    t = fit_temperature(logits, y)
    return {"temperature": t, "before": reliability(softmax(logits, axis=1), y),
            "after": reliability(softmax(logits / t, axis=1), y)}  # fmt: skip
