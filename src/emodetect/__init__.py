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


def analyze(image, **options):
    """Every face in an image (a path, bytes, a PIL image or an RGB uint8 array) with its emotion.

    Returns a list of `emodetect.inference.analyze.Face` (box, score, landmarks, probabilities, label,
    confidence), largest first. Options: model ("default", "fast", a file), detector ("mtcnn", "haar"),
    min_face_size, min_confidence, max_faces. The detector and model are loaded once and reused.
    """
    from emodetect.inference.analyze import analyze as _analyze

    return _analyze(image, **options)


def analyze_video(path, fps=None, *, smooth=0.5, detect_every=1, **options):
    """The analysed frames of a video (an iterator of `emodetect.inference.video.Frame`: index, time_s, faces
    with track ids and smoothed probabilities), `fps` frames per second of video time (None: every frame)."""
    from emodetect.inference.analyze import _shared
    from emodetect.inference.video import analyze_video as _analyze_video

    opts = {"model": "default", "detector": "mtcnn", "min_face_size": 40, "min_confidence": 0.0, "max_faces": None,
            **options}  # fmt: skip
    analyzer = _shared(opts["model"], opts["detector"], opts["min_face_size"], opts["min_confidence"], opts["max_faces"])
    return _analyze_video(path, analyzer, fps=fps, smooth_s=smooth, detect_every=detect_every)
