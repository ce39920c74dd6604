"""Photos -> faces -> emotions: detect every face, crop it like a training crop, classify crops in batches.

    import emodetect
    faces = emodetect.analyze("photo.jpg")          # or a PIL image, or an RGB uint8 array
    for f in faces:
        print(f.box, f.label, f.confidence, f.probabilities["happy"])

An `Analyzer` holds one loaded detector and one loaded model and reuses them for every image; the module-
level `analyze` keeps one per (model, detector) pair.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emodetect.data.decode import UnreadableImage, decode_rgb, on_white
from emodetect.data.source import UnreadableFile, read_regular_file
from emodetect.errors import EmodetectError
from emodetect.inference.crop import crop_face
from emodetect.inference.faces import Detection, create_detector
from emodetect.labels import CLASSES
from emodetect.models.artifact import resolve_artifact
from emodetect.models.predict import Predictor

MIN_FACE_SIZE = 40  # pixels: smaller faces carry too little expression to classify (and cost the most to find)


@dataclass
class Face:
    """One face in an image, with its emotion."""

    box: tuple[float, float, float, float]  # x, y, w, h in pixels of the image (may reach past its border)
    score: float  # the detector's confidence that this is a face
    landmarks: np.ndarray | None  # (5, 2): eyes, nose, mouth corners; None for detectors without landmarks
    probabilities: dict[str, float]  # calibrated, one per emotion, summing to 1
    label: str  # the most probable emotion, or "uncertain" below the analyzer's min_confidence
    confidence: float  # the top probability
    track: int | None = None  # the face's track id in a video
    extra: dict = field(default_factory=dict)  # e.g. smoothed probabilities in a video

    def to_dict(self) -> dict:
        out = {"box": [round(v, 2) for v in self.box], "score": round(self.score, 5),
               "landmarks": None if self.landmarks is None else np.round(self.landmarks.astype(np.float64), 2).tolist(),
               "label": self.label, "confidence": round(self.confidence, 5),
               "probabilities": {k: round(v, 5) for k, v in self.probabilities.items()}}  # fmt: skip
        if self.track is not None:
            out["track"] = self.track
        out.update(self.extra)
        return out


def load_image(image) -> np.ndarray:
    """A path, bytes, a PIL image or an array -> uint8 (H, W, 3) RGB; `UnreadableImage` with the reason."""
    if isinstance(image, (str, Path)):
        try:
            return decode_rgb(read_regular_file(image))
        except UnreadableFile as exc:
            raise UnreadableImage(str(exc)) from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_rgb(bytes(image))
    if type(image).__module__.startswith("PIL."):
        from emodetect.data.decode import _pillow_rgb

        try:  # a lazily opened file is decoded only now
            return _pillow_rgb(image)
        except OSError as exc:
            raise UnreadableImage(f"cannot decode this image: {exc}") from None
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be uint8 (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, got {a.dtype} {a.shape}")
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:  # as a decoded RGBA file is: alpha onto white
        return on_white(a)
    return np.ascontiguousarray(a)


class Analyzer:
    """A detector and an emotion model, loaded once, applied to many images.

    model: "default", "fast", a model file or a run folder. detector: "mtcnn" (default) or "haar".
    min_confidence: a face whose top probability is below it is labelled "uncertain" (its probabilities are
    kept). max_faces: keep at most this many faces per image, the largest first.
    """

    def __init__(self, model="default", detector: str = "mtcnn", *, min_face_size: int = MIN_FACE_SIZE,
                 min_confidence: float = 0.0, max_faces: int | None = None, max_side: int | None = 1600,
                 batch_size: int = 64, threads: int | None = None):  # fmt: skip
        if not 0 <= min_confidence <= 1:
            raise EmodetectError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        if max_faces is not None and max_faces < 1:
            raise EmodetectError(f"max_faces must be at least 1, got {max_faces}")
        self.predictor = Predictor(resolve_artifact(model), batch_size=batch_size, threads=threads)
        self.detector = create_detector(detector, min_face_size=min_face_size, max_side=max_side)
        self.min_confidence = min_confidence
        self.max_faces = max_faces

    @property
    def classes(self) -> tuple[str, ...]:
        return self.predictor.classes

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """The faces to classify, largest first (at most max_faces)."""
        found = sorted(self.detector.detect(rgb), key=lambda d: -d.box[2] * d.box[3])
        return found[: self.max_faces] if self.max_faces else found

    def classify(self, rgb_images: list[np.ndarray], detections: list[list[Detection]]) -> list[list[Face]]:
        """Crop and classify the faces of several images in one batch."""
        crops = [crop_face(img, d) for img, dets in zip(rgb_images, detections) for d in dets]
        proba = self.predictor.predict_proba(np.stack(crops)) if crops else np.zeros((0, len(self.classes)))
        if tuple(self.classes) != tuple(CLASSES):  # a model of fewer classes: theirs in place, the others 0
            full = np.zeros((len(proba), len(CLASSES)), proba.dtype)
            full[:, [CLASSES.index(c) for c in self.classes]] = proba
            proba = full
        out, k = [], 0
        for dets in detections:
            out.append([self._face(d, proba[k + j]) for j, d in enumerate(dets)])
            k += len(dets)
        return out

    def _face(self, d: Detection, p: np.ndarray) -> Face:
        top = int(p.argmax())
        conf = float(p[top])
        label = CLASSES[top] if conf >= self.min_confidence else "uncertain"
        return Face(d.box, d.score, d.landmarks, dict(zip(CLASSES, map(float, p))), label, conf)

    def analyze(self, image) -> list[Face]:
        """Every face in one image (a path, bytes, a PIL image or an RGB array), largest first."""
        rgb = load_image(image)
        return self.classify([rgb], [self.detect(rgb)])[0]


@functools.lru_cache(maxsize=4)
def _shared(model, detector, min_face_size, min_confidence, max_faces) -> Analyzer:
    return Analyzer(model, detector, min_face_size=min_face_size, min_confidence=min_confidence, max_faces=max_faces)


def analyze(image, *, model="default", detector: str = "mtcnn", min_face_size: int = MIN_FACE_SIZE,
            min_confidence: float = 0.0, max_faces: int | None = None) -> list[Face]:  # fmt: skip
    """Every face in `image` with its emotion; the detector and model are loaded once and kept."""
    model = str(model) if isinstance(model, Path) else model
    return _shared(model, detector, min_face_size, min_confidence, max_faces).analyze(image)
