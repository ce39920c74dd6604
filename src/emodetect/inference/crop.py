"""The one home for face crops: a detected face -> a crop framed like the training crops, eyes level.

The training crops (AffectNet on Kaggle, 96x96) are faces framed in a particular way; a model sees only
that framing. `bench/measure_framing.py` ran MTCNN on 2,000 of them (99.7% had a face) and measured where
its five landmarks sit in the crop: `TEMPLATE`. A face in a photo is mapped onto that template by a
similarity transform whose rotation levels the eyes and whose scale and shift fit the five points (least
squares); a detector without landmarks (Haar) maps its box onto the template's mean box instead. The crop
is cut at the training crops' own size (96x96), so the model's preprocessing sees what it saw in training.
Predict, video, the web server and any training from photos call `crop_face` and nothing else.
"""

from __future__ import annotations

import cv2
import numpy as np

from emodetect.inference.faces import Detection

CROP_SIZE = 96
# MTCNN's landmarks in a 96x96 training crop (mean of 1,993 AffectNet train crops; bench/measure_framing.py):
# left eye, right eye, nose, left mouth corner, right mouth corner (image left/right), x then y. The measured
# eyes differ in height by 0.26 px and the mouth corners by 0.25 px; each pair is set to its mean height, so
# that the template's eyes are level, as the crop function makes every face's.
TEMPLATE = np.float32([[34.90, 41.50], [62.44, 41.50], [48.75, 57.60], [37.31, 71.945], [60.36, 71.945]])
TEMPLATE_BOX = (18.3, 10.6, 60.4, 80.8)  # MTCNN's mean box in the same crops: x, y, w, h


def alignment_matrix(detection: Detection, size: int = CROP_SIZE) -> np.ndarray:
    """(2, 3) affine matrix from image pixels to crop pixels (a similarity: rotation, scale, shift)."""
    k = size / 96.0
    if detection.landmarks is None:  # no landmarks: the box onto the template's box, no rotation
        x, y, w, h = detection.box
        tx, ty, tw, th = (v * k for v in TEMPLATE_BOX)
        s = np.sqrt((tw * th) / max(w * h, 1e-6))  # one scale for both sides keeps the face's proportions
        cx, cy = x + w / 2, y + h / 2
        return np.float32([[s, 0, tx + tw / 2 - s * cx], [0, s, ty + th / 2 - s * cy]])
    pts = np.asarray(detection.landmarks, np.float64)
    template = TEMPLATE.astype(np.float64) * k
    dx, dy = pts[1] - pts[0]
    theta = np.arctan2(dy, dx)  # the eye line's angle: rotating by -theta levels the eyes
    rot = np.array([[np.cos(-theta), -np.sin(-theta)], [np.sin(-theta), np.cos(-theta)]])
    c, t = pts.mean(0), template.mean(0)
    p0, t0 = (pts - c) @ rot.T, template - t
    s = float((p0 * t0).sum() / max((p0 * p0).sum(), 1e-9))  # least-squares scale with the rotation fixed
    a = s * rot
    return np.float32(np.hstack([a, (t - a @ c)[:, None]]))


def crop_face(image: np.ndarray, detection: Detection, size: int = CROP_SIZE) -> np.ndarray:
    """The face as a (size, size, 3) uint8 RGB crop framed like the training crops; image: uint8 (H, W, 3)."""
    m = alignment_matrix(detection, size).astype(np.float64)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if scale < 0.5:  # a big face shrunk a lot: low-pass it first (as INTER_AREA would), or the crop aliases
        inv = cv2.invertAffineTransform(m)
        corners = inv @ np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64).T
        x0, y0 = np.floor(corners.min(1)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(1)).astype(int) + 2
        h, w = image.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 > x0 and y1 > y0:
            f = 2 * scale  # shrink the region to about twice the crop's resolution, then warp from there
            region = image[y0:y1, x0:x1]
            small = cv2.resize(region, (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))),
                               interpolation=cv2.INTER_AREA)  # fmt: skip
            fx, fy = small.shape[1] / (x1 - x0), small.shape[0] / (y1 - y0)
            # pixel centres: resize maps the region's x to (x - x0 + 0.5) * fx - 0.5 (a corner mapping would
            # shift the crop by up to half a small pixel)
            to_small = np.array([[fx, 0, fx * (0.5 - x0) - 0.5], [0, fy, fy * (0.5 - y0) - 0.5], [0, 0, 1]])
            m = (np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(to_small))[:2]
            image = small
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
