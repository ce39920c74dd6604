"""Fitting a scikit-learn pipeline: the classical models' counterpart of `fit_network`."""

from __future__ import annotations

import time
import warnings

from sklearn.exceptions import ConvergenceWarning

from emodetect.data.dataset import Dataset
from emodetect.data.transforms import to_pixel_rows
from emodetect.errors import EmodetectError
from emodetect.models.registry import ModelConfig, create_model
from emodetect.training.loop import FitResult


def fit_pipeline(model_cfg: ModelConfig, train: Dataset, log=print) -> FitResult:
    """Fit the pipeline `model_cfg` names on the train split's pixels (its eval preprocessing, flattened)."""
    t0 = time.perf_counter()
    pipe = create_model(model_cfg.name, **model_cfg.params)
    x = to_pixel_rows(train.images, model_cfg.preprocess)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            pipe.fit(x, train.labels)
        except ValueError as exc:  # e.g. PCA(1000) on fewer than 1,000 images: the data does not fit the model
            raise EmodetectError(f"{model_cfg.name} cannot be fitted on this data: {str(exc).splitlines()[0][:300]}") from None
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        log(f"{model_cfg.name}: the solver stopped at its iteration limit before converging (ConvergenceWarning)")
    return FitResult(pipe, [], {"converged": converged, "train_seconds": time.perf_counter() - t0})
