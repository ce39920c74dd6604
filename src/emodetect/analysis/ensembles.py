"""Ensembles by soft voting: a network with an SVM on its own embeddings, and averages of finished runs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from emodetect.errors import EmodetectError
from emodetect.evaluation.metrics import classification_metrics
from emodetect.labels import CLASSES


def cnn_svm(run_dir, data, data_cfg, *, C: float = 0.01, cache_dir=None) -> dict:
    """Fit a linear SVM (probabilities by Platt scaling, 3-fold) on a network's penultimate features of the
    train split, then average its probabilities with the network's calibrated ones on val and test."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from emodetect.models.artifact import load_artifact
    from emodetect.models.predict import Predictor
    from emodetect.runs import load_splits, model_path

    artifact = load_artifact(model_path(run_dir))
    _, tr, va, te = load_splits(data, data_cfg, artifact.preprocess.mode, cache_dir, progress=False)
    predictor = Predictor(artifact)
    svm = make_pipeline(StandardScaler(), CalibratedClassifierCV(
        LinearSVC(C=C, class_weight="balanced", dual="auto", max_iter=5000, random_state=0), cv=3))  # fmt: skip
    svm.fit(predictor.embed(tr.images), tr.labels)
    result = {"members": [artifact.name, f"svm({artifact.name} features)"], "svm_C": C}
    for name, ds in (("val", va), ("test", te)):
        p_net = predictor.predict_proba(ds.images)
        p_svm = np.zeros_like(p_net)
        p_svm[:, svm.classes_] = svm.predict_proba(predictor.embed(ds.images))
        result[name] = classification_metrics(ds.labels, ((p_net + p_svm) / 2).argmax(1))
        result[f"svm_{name}"] = classification_metrics(ds.labels, p_svm.argmax(1))
        result[f"network_{name}"] = classification_metrics(ds.labels, p_net.argmax(1))
    return result


def read_predictions(run_dir) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """split -> (paths, true label indices, probabilities) from a run's predictions.csv."""
    path = Path(run_dir) / "predictions.csv"
    if not path.exists():
        raise EmodetectError(f"no predictions.csv in {run_dir}")
    rows: dict[str, list] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["split"], []).append(r)
    index = {c: k for k, c in enumerate(CLASSES)}
    return {s: (np.array([r["path"] for r in rs]), np.array([index[r["true"]] for r in rs]),
                np.array([[float(r[c]) for c in CLASSES] for r in rs]))
            for s, rs in rows.items()}  # fmt: skip


def soft_vote(run_dirs) -> dict:
    """Average the val/test probabilities of finished runs (same split, same images)."""
    preds = [read_predictions(d) for d in run_dirs]
    result = {"members": [Path(d).name for d in run_dirs]}
    for split in ("val", "test"):
        paths, y, _ = preds[0][split]
        proba = np.zeros((len(paths), len(CLASSES)))
        for p in preds:
            other_paths, _, pr = p[split]
            if not np.array_equal(other_paths, paths):
                raise EmodetectError("soft vote: the runs were evaluated on different images")
            proba += pr / len(preds)
        result[split] = classification_metrics(y, proba.argmax(1))
    return result
