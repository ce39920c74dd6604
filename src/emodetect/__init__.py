"""emodetect: facial emotion recognition, from a reproducible study to a model you can ship.

Importing this package is cheap and has no side effects; heavy modules load on first use.
"""

__version__ = "0.1.0"


def load_model(model=None):
    """A model ready to predict: the shipped default (None or "default"), "fast", a model file or a run folder.

    Returns an `emodetect.models.predict.Predictor`: `predict(images)` gives class indices into
    `predictor.classes`, `predict_proba(images)` calibrated probabilities, `embed(images)` features. Images are
    uint8 face crops, (N, H, W) grayscale or (N, H, W, 3) RGB, any size (one face may drop the N), or floats
    in [0, 1]; the model's own preprocessing is applied. `predictor.artifact` holds the model and its
    description (`artifact.meta`).
    """
    from emodetect.models.artifact import resolve_artifact
    from emodetect.models.predict import Predictor

    return Predictor(resolve_artifact(model))
