"""Classical pipelines (scikit-learn), fitted on flattened grayscale pixels from the eval preset.

Every pipeline takes X of shape (N, 96 * 96) with pixels in [0, 1]; hyperparameters use scikit-learn's
``step__param`` names (``pca__n_components``, ``clf__C``) and can be overridden from the command line.
"""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils._param_validation import Integral, Interval

from emodetect.data.transforms import Preprocess
from emodetect.models.registry import register_model

PIXELS = Preprocess(size=96, mode="gray", mean=(0.0,), std=(1.0,))  # [0, 1] pixels, flattened


class FaceFeatures(TransformerMixin, BaseEstimator):
    """Hand-crafted texture features of (N, S*S) pixel rows: HOG (OpenCV) and/or uniform-LBP histograms.

    HOG: 8x8-pixel cells, 2x2-cell blocks, 9 orientations. LBP: 8 neighbours at radius 1, the 58 uniform
    patterns plus one bin for the rest, histogrammed in a ``lbp_grid`` x ``lbp_grid`` grid of cells.
    """

    _parameter_constraints = {
        "hog": ["boolean"],
        "lbp": ["boolean"],
        "lbp_grid": [Interval(Integral, 1, 16, closed="both")],
        "size": [Interval(Integral, 16, 512, closed="both")],
    }

    def __init__(self, hog: bool = True, lbp: bool = True, lbp_grid: int = 6, size: int = 96):
        self.hog = hog
        self.lbp = lbp
        self.lbp_grid = lbp_grid
        self.size = size

    def _validate_params(self):
        super()._validate_params()
        if not (self.hog or self.lbp):
            raise ValueError("FaceFeatures needs hog or lbp (or both) turned on")

    def fit(self, X, y=None):
        self._validate_params()
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        imgs = np.clip(np.asarray(X, np.float32).reshape(-1, self.size, self.size) * 255 + 0.5, 0, 255).astype(np.uint8)
        parts = []
        if self.hog:
            s = self.size
            desc = cv2.HOGDescriptor((s, s), (16, 16), (8, 8), (8, 8), 9)
            parts.append(np.stack([desc.compute(im).ravel() for im in imgs]))
        if self.lbp:
            parts.append(lbp_histograms(imgs, self.lbp_grid))
        return np.concatenate(parts, axis=1).astype(np.float32)


def _uniform_lut() -> np.ndarray:
    lut = np.full(256, 58, np.int64)
    k = 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            lut[code] = k
            k += 1
    return lut


_LUT = _uniform_lut()


def lbp_histograms(imgs: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, grid * grid * 59) normalised uniform-LBP histograms."""
    x = imgs.astype(np.int16)
    c = x[:, 1:-1, 1:-1]
    h, w = c.shape[1:]
    offsets = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))
    code = np.zeros(c.shape, np.int64)
    for bit, (dy, dx) in enumerate(offsets):
        code |= (x[:, dy : dy + h, dx : dx + w] >= c).astype(np.int64) << bit
    labels = _LUT[code]  # (N, h, w) in 0..58
    cy = np.minimum(np.arange(h) * grid // h, grid - 1)
    cx = np.minimum(np.arange(w) * grid // w, grid - 1)
    cell = (cy[:, None] * grid + cx[None, :])  # (h, w)
    n = len(imgs)
    flat = (np.arange(n)[:, None, None] * grid * grid + cell[None]) * 59 + labels
    hist = np.bincount(flat.ravel(), minlength=n * grid * grid * 59).reshape(n, grid * grid, 59).astype(np.float32)
    hist /= hist.sum(axis=2, keepdims=True)
    return hist.reshape(n, -1)


def _pca(n_components, random_state):
    return PCA(n_components=n_components, svd_solver="randomized", random_state=random_state)


@register_model("logreg", kind="sklearn", preprocess=PIXELS, description="StandardScaler -> PCA(1000) -> LogisticRegression",
                defaults={"pca__n_components": 1000, "clf__C": 1.0, "clf__max_iter": 300, "random_state": 0})  # fmt: skip
def logreg(num_classes=8, pretrained=False, random_state=0, **params):
    pipe = Pipeline([("scale", StandardScaler()), ("pca", _pca(1000, random_state)),
                     ("clf", LogisticRegression(class_weight="balanced", random_state=random_state))])  # fmt: skip
    return pipe.set_params(**params)


@register_model("logreg_raw", kind="sklearn", preprocess=PIXELS, description="StandardScaler -> LogisticRegression on raw pixels",
                defaults={"clf__C": 1.0, "clf__max_iter": 300, "random_state": 0})  # fmt: skip
def logreg_raw(num_classes=8, pretrained=False, random_state=0, **params):
    pipe = Pipeline([("scale", StandardScaler()),
                     ("clf", LogisticRegression(class_weight="balanced", random_state=random_state))])  # fmt: skip
    return pipe.set_params(**params)


@register_model("random_forest", kind="sklearn", preprocess=PIXELS,
                description="StandardScaler -> PCA(1000) -> RandomForest(300 trees, depth 20)",
                defaults={"pca__n_components": 1000, "clf__n_estimators": 300, "clf__max_depth": 20,
                          "clf__n_jobs": -1, "random_state": 0})  # fmt: skip
def random_forest(num_classes=8, pretrained=False, random_state=0, **params):
    pipe = Pipeline([("scale", StandardScaler()), ("pca", _pca(1000, random_state)),
                     ("clf", RandomForestClassifier(class_weight="balanced", random_state=random_state))])  # fmt: skip
    return pipe.set_params(**params)


@register_model("mlp", kind="sklearn", preprocess=PIXELS,
                description="StandardScaler -> PCA(1000) -> MLP(512-256-128) with early stopping",
                defaults={"pca__n_components": 1000, "clf__hidden_layer_sizes": (512, 256, 128), "clf__alpha": 1e-2,
                          "clf__learning_rate_init": 1e-3, "clf__max_iter": 200, "clf__n_iter_no_change": 10,
                          "random_state": 0})  # fmt: skip
def mlp(num_classes=8, pretrained=False, random_state=0, **params):
    clf = MLPClassifier(early_stopping=True, validation_fraction=0.1, random_state=random_state)
    pipe = Pipeline([("scale", StandardScaler()), ("pca", _pca(1000, random_state)), ("clf", clf)])
    params["clf__hidden_layer_sizes"] = tuple(params.get("clf__hidden_layer_sizes", (512, 256, 128)))
    return pipe.set_params(**params)


@register_model("hog_lbp_svm", kind="sklearn", preprocess=PIXELS,
                description="HOG + uniform-LBP features -> StandardScaler -> linear SVM",
                defaults={"features__hog": True, "features__lbp": True, "clf__C": 0.005, "random_state": 0})  # fmt: skip
def hog_lbp_svm(num_classes=8, pretrained=False, random_state=0, **params):
    pipe = Pipeline([("features", FaceFeatures()), ("scale", StandardScaler()),
                     ("clf", LinearSVC(class_weight="balanced", dual="auto", max_iter=5000,
                                       random_state=random_state))])  # fmt: skip
    return pipe.set_params(**params)


def pipeline_embeddings(pipe: Pipeline, X: np.ndarray) -> np.ndarray:
    """The representation a pipeline's classifier sees; for an MLP, its last hidden layer's activations."""
    clf = pipe.steps[-1][1]
    h = pipe[:-1].transform(X) if len(pipe.steps) > 1 else X
    if isinstance(clf, MLPClassifier):
        for W, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
            h = np.maximum(h @ W + b, 0)  # the MLP's hidden activation is ReLU
    return np.asarray(h, np.float32)
