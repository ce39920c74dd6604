"""Decode image bytes into fixed-size uint8 arrays: the one place where files become pixels."""

from __future__ import annotations

import io

import cv2
import numpy as np

COLOR_MODES = ("gray", "rgb")


def sniff_format(data: bytes) -> str:
    """The real file format from its magic bytes (the extension can lie)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return "unknown"


def _is_truncated(data: bytes, fmt: str) -> bool:
    # OpenCV decodes a truncated JPEG into a half-grey image without failing, so check the end markers.
    if fmt == "jpeg":
        return b"\xff\xd9" not in data[-64:].rstrip(b"\x00")
    if fmt == "png":
        return b"IEND" not in data[-16:]
    return False


def to_square(img: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square (keeps the face's aspect ratio), then resize to size x size."""
    h, w = img.shape[:2]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        img = img[top : top + s, left : left + s]
    if img.shape[0] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return img


def convert_color(bgr: np.ndarray, mode: str) -> np.ndarray:
    """BGR (OpenCV's order) -> 'gray' (H, W) or 'rgb' (H, W, 3)."""
    if mode == "gray":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if mode == "rgb":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unknown colour mode {mode!r}; expected one of {COLOR_MODES}")


def decode_bgr(data: bytes) -> np.ndarray | None:
    """Decode to an 8-bit BGR array of the file's own size, or None if the bytes are not a complete image."""
    fmt = sniff_format(data)
    if fmt == "unknown" or _is_truncated(data, fmt):
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        img = _decode_with_pillow(data)
    return img


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def decode(data: bytes, mode: str = "gray", size: int = 96) -> np.ndarray | None:
    """Bytes -> uint8 array of shape (size, size) for 'gray' or (size, size, 3) for 'rgb'; None if unreadable."""
    bgr = decode_bgr(data)
    if bgr is None:
        return None
    return convert_color(to_square(bgr, size), mode)
