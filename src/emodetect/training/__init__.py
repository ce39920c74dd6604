"""Training networks: `train_one_epoch` and `evaluate_epoch` (plain functions), wrapped by `fit`."""

from emodetect.training.loop import class_weights, evaluate_epoch, fit, train_one_epoch

__all__ = ["class_weights", "evaluate_epoch", "fit", "train_one_epoch"]
