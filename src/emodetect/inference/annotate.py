"""Drawing results on photos and video frames: a box, the emotion and its confidence for every face."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emodetect.errors import EmodetectError
from emodetect.inference.analyze import Face

COLOURS = {  # RGB, one per emotion; "uncertain" in grey
    "anger": (220, 50, 47), "contempt": (181, 137, 0), "disgust": (133, 153, 0), "fear": (108, 113, 196),
    "happy": (42, 161, 152), "neutral": (147, 161, 161), "sad": (38, 139, 210), "surprise": (211, 54, 130),
    "uncertain": (120, 120, 120),
}  # fmt: skip


def draw_faces(rgb: np.ndarray, faces: list[Face], smoothed: bool = False) -> np.ndarray:
    """A copy of the image with each face's box and label ("happy 0.93", with the track id in a video)."""
    out = rgb.copy()
    thick = max(1, round(max(rgb.shape[:2]) / 400))
    for f in faces:
        label, conf = f.label, f.confidence
        if smoothed and f.extra.get("smoothed_label"):
            label, conf = f.extra["smoothed_label"], f.extra["smoothed_confidence"]
        colour = COLOURS.get(label, (255, 255, 255))
        x, y, w, h = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, thick)
        text = (f"#{f.track} " if f.track is not None else "") + f"{label} {conf:.2f}"
        scale = max(0.4, min(1.2, w / 160))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, y - th - base - 4)
        cv2.rectangle(out, (x, top), (x + tw + 4, top + th + base + 4), colour, -1)
        cv2.putText(out, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_image(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise EmodetectError(f"cannot write {path}")
    from emodetect.files import atomic_write

    atomic_write(path, buf.tobytes())


class VideoAnnotator:
    """Writes analysed frames, with their faces drawn (smoothed emotions), to an .mp4 file."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = Path(path), fps, None

    def write(self, frame) -> None:
        img = draw_faces(frame.image, frame.faces, smoothed=True)
        if self.writer is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EmodetectError(f"cannot write video {self.path}: {exc.strerror or exc}") from None
            h, w = img.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise EmodetectError(f"cannot write video {self.path}")
        self.writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
