"""Training: `train_one_epoch` and `evaluate_epoch` (plain functions) wrapped by `fit_network`; `fit_pipeline`."""

from emodetect.training.loop import FitResult, class_weights, evaluate_epoch, fit_network, train_one_epoch
from emodetect.training.pipelines import fit_pipeline

__all__ = ["FitResult", "class_weights", "evaluate_epoch", "fit_network", "fit_pipeline", "train_one_epoch"]
