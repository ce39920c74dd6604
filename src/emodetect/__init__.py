"""emodetect: facial emotion recognition, from a reproducible study to a model you can ship.

Importing this package is cheap and has no side effects; heavy modules load on first use.
"""

__version__ = "0.1.0"

DEFAULT_MODEL = "default.safetensors"


def load_model(path=None):
    """The model that ships with the package (or the model file at `path`), ready to predict.

    Returns an `emodetect.models.artifact.Artifact`; wrap it in `emodetect.models.predict.Predictor`
    for predictions on uint8 face images.
    """
    from importlib import resources

    from emodetect.errors import EmodetectError
    from emodetect.models.artifact import load_artifact

    if path is not None:
        return load_artifact(path)
    shipped = resources.files("emodetect.weights").joinpath(DEFAULT_MODEL)
    if not shipped.is_file():
        raise EmodetectError("this installation has no shipped model (emodetect/weights/default.safetensors)")
    with resources.as_file(shipped) as p:
        return load_artifact(p)
