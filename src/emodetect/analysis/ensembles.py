"""Ensembles by soft voting: a network with an SVM on its own embeddings, and averages of probabilities.

Numbers in, numbers out: the study decides which runs to combine and where their outputs come from.
"""

from __future__ import annotations

import numpy as np

from emodetect.labels import CLASSES


def fit_feature_svm(features: np.ndarray, labels: np.ndarray, C: float = 0.01, random_state: int = 0):
    """A linear SVM on (standardised) features with probabilities by Platt scaling (3-fold), as a Pipeline."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=C, class_weight="balanced", dual="auto", max_iter=5000, random_state=random_state)
    return make_pipeline(StandardScaler(), CalibratedClassifierCV(svm, cv=3)).fit(features, labels)


def class_proba(model, features: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    """A fitted classifier's probabilities with one column per class in CLASSES order (absent classes: 0)."""
    out = np.zeros((len(features), n_classes))
    out[:, model.classes_] = model.predict_proba(features)
    return out


def soft_vote(probas: list[np.ndarray]) -> np.ndarray:
    """The mean of several models' (N, K) probabilities for the same images."""
    shapes = {p.shape for p in probas}
    if len(shapes) != 1:
        raise ValueError(f"soft vote: the models scored different images ({sorted(shapes)})")
    return np.mean(probas, axis=0)
