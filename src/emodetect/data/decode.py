"""Decode image bytes into uint8 arrays: the one place where files become pixels.

`decode_rgb` is the only decoder. It never lets a decoder's own exception out: anything it cannot read
becomes an `UnreadableImage` naming the reason, so one bad file never stops a run.

- The file's signature decides its format (the extension can lie): JPEG, PNG, BMP, WebP, TIFF, GIF.
- The pixel count is read from the header and checked against `max_image_pixels()` (50 megapixels, or
  ``$EMODETECT_MAX_PIXELS``) before anything is decoded: a decompression bomb costs nothing.
- Truncated JPEG and PNG files are refused (OpenCV would return a half-grey image); trailing bytes after a
  complete image are fine.
- EXIF orientation is applied; any mode becomes 8-bit RGB: gray, palette, CMYK, 16-bit (full range),
  32-bit integer and float images (by their real range), alpha composited onto white; the first frame of
  an animation or a multi-page TIFF.
"""

from __future__ import annotations

import io
import os
import re
import warnings

import cv2
import numpy as np

from emodetect.errors import EmodetectError

COLOR_MODES = ("gray", "rgb")
FORMATS = ("jpeg", "png", "bmp", "webp", "tiff", "gif")
DEFAULT_MAX_PIXELS = 50_000_000


class UnreadableImage(EmodetectError):
    """A file that is not an image this package can read; the message says why."""


def max_image_pixels() -> int:
    """The pixel limit for one image: ``$EMODETECT_MAX_PIXELS`` if set, else 50 megapixels."""
    value = os.environ.get("EMODETECT_MAX_PIXELS", "")
    try:
        return max(1, int(value)) if value.strip() else DEFAULT_MAX_PIXELS
    except ValueError:
        raise EmodetectError(f"EMODETECT_MAX_PIXELS must be a whole number of pixels, got {value!r}") from None


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
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "unknown"


_NOT_FF = re.compile(rb"[^\xff]")
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy-coded data: the next real marker
_MAX_SEGMENTS = 10_000  # real files have dozens; a file made of millions is a CPU trap


def _jpeg_is_complete(data: bytes) -> bool:
    """Walk the JPEG markers to the end-of-image marker; False if the file stops before it."""
    n, i = len(data), 2
    for _ in range(_MAX_SEGMENTS):
        if i + 1 >= n or data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # a run of fill bytes: skip it at once
            m = _NOT_FF.search(data, i + 1)
            if m is None:
                return False
            i = m.start() - 1
            continue
        if marker == 0xD9:  # EOI
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            m = _SCAN_END.search(data, i)
            if m is None:
                return False
            i = m.start()
    return False


def _png_is_complete(data: bytes) -> bool:
    """Walk the PNG chunks to IEND; False if the file stops before it."""
    n, i = len(data), 8
    for _ in range(_MAX_SEGMENTS * 10):
        if i + 8 > n:
            return False
        length = int.from_bytes(data[i : i + 4], "big")
        if data[i + 4 : i + 8] == b"IEND":
            return True
        i += 12 + length
    return False


def _real_range(a: np.ndarray) -> np.ndarray:
    """Float or wide-integer pixels -> uint8 by the values' real range ([0, 1] floats map to 0-255).

    float32 and in place: a 50-megapixel float TIFF costs about 13 bytes per pixel here, not 33."""
    is_float = np.asarray(a).dtype.kind == "f"
    a = np.asarray(a, np.float32)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if lo >= 0 and hi <= 1 and is_float:
        lo, hi = 0.0, 1.0
    out = a - np.float32(lo)
    out *= np.float32(255.0 / (hi - lo) if hi > lo else 0.0)
    out[~finite] = 0
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _pillow_rgb(im) -> np.ndarray:
    """Any Pillow image -> (H, W, 3) uint8 RGB (orientation applied, alpha on white, wide modes by range)."""
    from PIL import ImageOps

    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block does not make the pixels unreadable
        pass
    mode = im.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb(((np.asarray(im, np.uint32) + 128) // 257).astype(np.uint8))  # round(x / 257)
    if mode in ("I", "F"):
        return _gray_to_rgb(_real_range(np.asarray(im)))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        return on_white(np.asarray(im.convert("RGBA")))
    return np.asarray(im.convert("RGB"))


def on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4) RGBA -> (H, W, 3) RGB, composited onto white (what a viewer shows)."""
    alpha = rgba[..., 3:].astype(np.uint16)  # integer compositing: a quarter of float32's memory
    return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _open(data: bytes, max_pixels: int):
    """Pillow's lazy open (the header only) with the pixel check; nothing is decoded yet."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes (bombs under the limit, corrupt EXIF) are not the user's concern
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise UnreadableImage(f"declares more than {max_pixels:,} pixels (limit: EMODETECT_MAX_PIXELS)") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise UnreadableImage(f"declares an empty image ({w}x{h})")
    if w * h > max_pixels:
        raise UnreadableImage(f"declares {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                              "(EMODETECT_MAX_PIXELS)")  # fmt: skip
    return im


def _decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    fmt = sniff_format(data)
    if fmt == "unknown":
        raise UnreadableImage("not an image file (unknown signature)")
    if (fmt == "jpeg" and not _jpeg_is_complete(data)) or (fmt == "png" and not _png_is_complete(data)):
        raise UnreadableImage(f"truncated {fmt.upper()} file")
    im = _open(data, max_pixels)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on odd files (EXIF, bombs) are not the user's concern
        if fmt == "jpeg" and im.mode in ("RGB", "L"):  # the common case: OpenCV is faster than Pillow (for PNG,
            # libpng through OpenCV prints its errors to stderr; Pillow decodes PNG as fast and quietly)
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation
            if bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rgb = _pillow_rgb(im)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise UnreadableImage(f"decoded to an unexpected shape {rgb.shape}")
    return np.ascontiguousarray(rgb, np.uint8)


def decode_rgb(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 RGB at the file's own size; raises `UnreadableImage` with the reason."""
    limit = max_pixels or max_image_pixels()
    try:
        return _decode_rgb(bytes(data), limit)
    except UnreadableImage:
        raise
    except MemoryError:
        raise UnreadableImage("not enough memory to decode it") from None
    except Exception as exc:  # every decoder error (cv2.error, OSError, SyntaxError, ...) means the same here
        raise UnreadableImage(f"cannot be decoded ({type(exc).__name__}: {str(exc)[:200]})") from None


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


def convert_color(rgb: np.ndarray, mode: str) -> np.ndarray:
    """RGB -> 'gray' (H, W) or 'rgb' (H, W, 3)."""
    if mode == "gray":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if mode == "rgb":
        return rgb
    raise ValueError(f"unknown colour mode {mode!r}; expected one of {COLOR_MODES}")


def decode(data: bytes, mode: str = "gray", size: int = 96) -> np.ndarray | None:
    """Bytes -> uint8 array of shape (size, size) for 'gray' or (size, size, 3) for 'rgb'; None if unreadable."""
    try:
        rgb = decode_rgb(data)
    except UnreadableImage:
        return None
    return convert_color(to_square(rgb, size), mode)
