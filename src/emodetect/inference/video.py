"""Videos -> per-frame faces with stable track ids and emotions smoothed over time.

Frames are decoded one at a time (memory stays flat however long the video is) and analysed at `fps`
frames per second of video time (every frame by default), with timestamps from the container. Faces are
tracked across analysed frames by IoU matching; each track's probabilities are smoothed by an exponential
moving average with a time constant in seconds (the raw ones are kept beside them). Detection can run on
every k-th analysed frame only: in between, each track's last face is cropped again where it was.

    for frame in emodetect.analyze_video("clip.mp4", fps=10):
        for face in frame.faces:
            print(frame.time_s, face.track, face.label, face.extra["smoothed_label"])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from emodetect.data.decode import max_image_pixels
from emodetect.errors import EmodetectError, FramesLost
from emodetect.inference.analyze import Analyzer, Face
from emodetect.inference.faces import Detection
from emodetect.labels import CLASSES

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


@dataclass
class Frame:
    """One analysed frame of a video."""

    index: int  # the frame's number in the video (0-based)
    time_s: float  # its timestamp from the container
    faces: list[Face]
    image: np.ndarray | None = None  # the RGB frame, when asked for (annotation)


@dataclass
class Track:
    """A face followed through the video."""

    id: int
    detection: Detection
    last_time: float  # when its probabilities were last smoothed
    first_time: float
    last_seen: float = 0.0  # when a face was last assigned to it
    smoothed: np.ndarray | None = None  # (K,) smoothed probabilities
    n_frames: int = 0
    time_by_label: dict = field(default_factory=dict)  # smoothed label -> seconds on screen with that label
    history: list = field(default_factory=list)  # (time, smoothed probabilities) for the timeline


def iou(a: tuple, b: tuple) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / max(aw * ah + bw * bh - inter, 1e-9)


class Tracker:
    """Greedy IoU matching of each frame's faces to live tracks; EMA smoothing of their probabilities."""

    def __init__(self, smooth_s: float = 0.5, min_iou: float = 0.3, max_gap_s: float = 1.0):
        self.smooth_s, self.min_iou, self.max_gap_s = smooth_s, min_iou, max_gap_s
        self.tracks: dict[int, Track] = {}
        self.finished: list[Track] = []
        self._next = 1

    def live(self, time_s: float) -> list[Track]:
        return [t for t in self.tracks.values() if time_s - t.last_seen <= self.max_gap_s]

    def assign(self, detections: list[Detection], time_s: float) -> list[int]:
        """A track id for each detection (new tracks for unmatched ones); tracks gone too long are closed."""
        for tid in [t.id for t in self.tracks.values() if time_s - t.last_seen > self.max_gap_s]:
            self.finished.append(self.tracks.pop(tid))
        pairs = sorted(((iou(d.box, t.detection.box), i, t.id) for i, d in enumerate(detections)
                        for t in self.tracks.values()), reverse=True)  # fmt: skip
        ids: list[int | None] = [None] * len(detections)
        used: set[int] = set()
        for overlap, i, tid in pairs:
            if overlap < self.min_iou:
                break
            if ids[i] is None and tid not in used:
                ids[i], used = tid, used | {tid}
        for i, d in enumerate(detections):
            if ids[i] is None:
                ids[i] = self._next
                self.tracks[self._next] = Track(self._next, d, time_s, time_s)
                self._next += 1
            self.tracks[ids[i]].detection = d
            self.tracks[ids[i]].last_seen = time_s
        return ids

    def smooth(self, t: Track, proba: np.ndarray, time_s: float) -> np.ndarray:
        """The track's EMA after this observation: weight 1 - exp(-dt / smooth_s) on the new one. The track
        itself, not its id: a later frame of the same batch may already have closed it."""
        if t.smoothed is None or self.smooth_s <= 0:
            new = proba.copy()
        else:
            alpha = 1 - math.exp(-max(time_s - t.last_time, 0.0) / self.smooth_s)
            new = t.smoothed + alpha * (proba - t.smoothed)
        if t.smoothed is not None:  # the time since the last observation counts for the label held over it
            label = CLASSES[int(t.smoothed.argmax())]
            t.time_by_label[label] = t.time_by_label.get(label, 0.0) + max(time_s - t.last_time, 0.0)
        t.smoothed, t.last_time = new, time_s
        t.n_frames += 1
        t.history.append((time_s, new))
        return new

    def summaries(self) -> list[dict]:
        """Per track: time on screen, dominant (smoothed) emotion, share of time per emotion."""
        out = []
        for t in sorted(self.finished + list(self.tracks.values()), key=lambda t: t.id):
            total = sum(t.time_by_label.values())
            share = {k: v / total for k, v in sorted(t.time_by_label.items(), key=lambda kv: -kv[1])} if total else {}
            dominant = next(iter(share), CLASSES[int(t.smoothed.argmax())] if t.smoothed is not None else None)
            out.append({"track": t.id, "first_s": round(t.first_time, 3), "last_s": round(t.last_time, 3),
                        "seconds": round(t.last_time - t.first_time, 3), "frames": t.n_frames,
                        "dominant": dominant, "share": {k: round(v, 4) for k, v in share.items()}})  # fmt: skip
        return out


def open_video(path: str | Path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise EmodetectError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EmodetectError(f"cannot open video {path} (not a video, or a codec OpenCV cannot decode)")
    w, h, limit = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), max_image_pixels()
    if w * h > limit:  # the photos' limit holds for every frame: one frame is decoded before anything can refuse it
        cap.release()
        raise EmodetectError(f"video {path} has {w}x{h} = {w * h:,} pixels per frame, over the limit of {limit:,} "
                             "(EMODETECT_MAX_PIXELS)")  # fmt: skip
    return cap


def frames(path: str | Path, fps: float | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, time in seconds, RGB frame) for frames at `fps` per second of video time (None: every frame).

    Decoding stops at the first frame that will not decode; if that leaves frames the container declares, a
    `FramesLost` warning says how many were read."""
    cap = open_video(path)
    try:
        native = cap.get(cv2.CAP_PROP_FPS) or 25.0
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        step = None if not fps else 1.0 / fps
        next_t, index = 0.0, -1
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            index += 1
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if t <= 0 and index > 0:  # a container without timestamps: from the frame rate
                t = index / native
            if step is not None:
                if t + 1e-6 < next_t:
                    continue
                next_t += step
                if next_t <= t:  # the video's own rate is below the one asked for: take every frame
                    next_t = t + step
            yield index, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        decoded = index + 1
        if declared - decoded > max(1, declared // 50):  # an index-less container's count is an estimate: 2% slack
            warnings.warn(f"video {path}: decoded {decoded} of the {declared} frames its container declares; the rest "
                          "could not be decoded (a damaged or cut-short file)", FramesLost, stacklevel=2)  # fmt: skip
    finally:
        cap.release()


def video_info(path: str | Path) -> dict:
    cap = open_video(path)
    try:
        return {"fps": cap.get(cv2.CAP_PROP_FPS), "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
                "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}  # fmt: skip
    finally:
        cap.release()


def analyze_video(path, analyzer: Analyzer | None = None, *, fps: float | None = None, smooth_s: float = 0.5,
                  detect_every: int = 1, batch_frames: int = 8, keep_images: bool = False,
                  tracker: Tracker | None = None) -> Iterator[Frame]:  # fmt: skip
    """Analysed frames of a video, in order; `tracker` (made here if not given) holds the track summaries."""
    analyzer = analyzer or Analyzer()
    tracker = tracker if tracker is not None else Tracker(smooth_s)
    if detect_every < 1:
        raise EmodetectError(f"detect_every must be at least 1, got {detect_every}")
    pending: list[tuple[int, float, np.ndarray, list[Detection] | None]] = []
    n = 0
    for index, t, rgb in frames(path, fps):
        dets = analyzer.detect(rgb) if n % detect_every == 0 else None  # None: reuse the tracks' last faces
        pending.append((index, t, rgb, dets))
        n += 1
        if len(pending) >= batch_frames or (dets is None and detect_every > 1):
            yield from _flush(pending, analyzer, tracker, keep_images)
            pending = []
    yield from _flush(pending, analyzer, tracker, keep_images)


def _flush(pending, analyzer: Analyzer, tracker: Tracker, keep_images: bool) -> Iterator[Frame]:
    """Classify the faces of a few frames in one batch, then track and smooth them frame by frame."""
    resolved = []
    for index, t, rgb, dets in pending:
        if dets is None:  # between detections: the live tracks' last faces, cropped where they were
            tracks = tracker.live(t)
            dets = [tr.detection for tr in tracks]
        else:
            tracks = [tracker.tracks[tid] for tid in tracker.assign(dets, t)]
        resolved.append((index, t, rgb, dets, tracks))
    faces = analyzer.classify([r[2] for r in resolved], [r[3] for r in resolved])
    for (index, t, rgb, _, tracks), frame_faces in zip(resolved, faces):
        for face, track in zip(frame_faces, tracks):
            p = np.array([face.probabilities[c] for c in CLASSES])
            s = tracker.smooth(track, p, t)
            top = int(s.argmax())
            face.track = track.id
            face.extra = {"smoothed": {c: round(float(v), 5) for c, v in zip(CLASSES, s)},
                          "smoothed_label": CLASSES[top], "smoothed_confidence": round(float(s[top]), 5)}  # fmt: skip
        yield Frame(index, t, frame_faces, rgb if keep_images else None)
