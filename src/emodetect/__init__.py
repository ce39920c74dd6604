"""emodetect: facial emotion recognition, from a reproducible study to a model you can ship.

Importing this package is cheap and has no side effects; heavy modules load on first use.
"""

__version__ = "0.1.0"

DEFAULT_MODEL = "default.safetensors"


def load_model(path=None):
    """The model that ships with the package (or the model file at `path`), ready to predict.

    Returns an `emodetect.models.predict.Predictor`: `predict(images)` gives class indices into
    `predictor.classes`, `predict_proba(images)` calibrated probabilities, `embed(images)` features. Images are
    uint8 face crops, (N, H, W) grayscale or (N, H, W, 3) RGB, any size; the model's own preprocessing is
    applied. `predictor.artifact` holds the network and its description (`artifact.meta`).
    """
    from importlib import resources

    from emodetect.errors import EmodetectError
    from emodetect.models.artifact import load_artifact
    from emodetect.models.predict import Predictor

    if path is not None:
        return Predictor(load_artifact(path))
    shipped = resources.files("emodetect.weights").joinpath(DEFAULT_MODEL)
    if not shipped.is_file():
        raise EmodetectError("this installation has no shipped model (emodetect/weights/default.safetensors)")
    with resources.as_file(shipped) as p:
        return Predictor(load_artifact(p))
