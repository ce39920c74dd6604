"""The one home for preprocessing: uint8 images -> normalised model input, and batched train augmentation.

Prediction, evaluation, training and export all go through `to_model_input` with a model's `Preprocess`;
nothing else resizes, converts colour or normalises. Augmentation runs on whole batches with torch ops
(one affine grid per batch), so it never starves the model on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from emodetect.config import Augment

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, the same weights OpenCV and Pillow use


@dataclass(frozen=True)
class Preprocess:
    """What a network expects: square size, colour mode and per-channel normalisation of [0, 1] pixels."""

    size: int = 96
    mode: str = "gray"  # "gray" (1 channel) or "rgb" (3 channels)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "gray" else 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(size=int(d["size"]), mode=d["mode"], mean=tuple(d["mean"]), std=tuple(d["std"]))


def as_image_batch(images) -> np.ndarray:
    """Check and normalise what a user passes as face images: a uint8 (N, H, W) or (N, H, W, 3) array.

    Accepted: uint8 (or other integer) arrays with values 0-255, and float arrays with values in [0, 1]
    (scaled by 255 and rounded); a batch (N, H, W) gray or (N, H, W, 3) RGB, one face (H, W) or (H, W, 3),
    and (..., 1) gray channels. An empty batch stays empty. Anything else raises one `ValueError` naming
    the problem: NaN or out-of-range values, 4 channels, channels-first (N, C, H, W) arrays, bool, uint16.
    """
    if isinstance(images, torch.Tensor):
        if images.layout != torch.strided or images.device.type == "meta":
            raise ValueError(f"images must be a dense tensor with data, got a {images.layout} tensor on {images.device}")
        images = images.detach().cpu()
        images = (images.float() if images.dtype in (torch.bfloat16, torch.float16) else images).numpy()
    try:
        x = np.asarray(images)
    except ValueError:
        raise ValueError("images must be one array (faces of different sizes cannot form a batch)") from None
    if x.size == 0:
        if x.ndim >= 3 and 0 in x.shape[1:3]:
            raise ValueError(f"images of size 0 ({x.shape})")
        return np.zeros((0, 1, 1), np.uint8) if x.ndim < 3 else np.zeros((0, *x.shape[1:]), np.uint8)
    kind = x.dtype.kind
    if kind == "b":
        raise ValueError("boolean arrays are not images; pass uint8 pixels 0-255 or floats in [0, 1]")
    if x.dtype == np.uint16:
        raise ValueError("uint16 pixels have no agreed 8-bit scale; convert to uint8 first, e.g. (img / 257).astype(np.uint8)")
    if kind not in "uif":
        raise ValueError(f"images must be numeric pixel arrays, got dtype {x.dtype}")
    x = _as_nhw_c(x)
    if kind == "f":
        if not np.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"float images must hold values in [0, 1], got {lo:g} to {hi:g} (pass uint8 for 0-255 pixels)")
        return np.ascontiguousarray(np.rint(x * 255.0), np.uint8)
    if x.dtype != np.uint8:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer pixel values must lie in 0-255, got {lo} to {hi}")
    return np.ascontiguousarray(x, np.uint8)


def _as_nhw_c(x: np.ndarray) -> np.ndarray:
    """Shapes -> (N, H, W) gray or (N, H, W, 3) RGB, or a ValueError naming what is wrong."""
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        if x.shape[-1] == 3:
            return x[None]  # one RGB face
        if x.shape[-1] == 1:
            return x[None, ..., 0]
        if x.shape[-1] == 4:
            raise ValueError("4 channels (RGBA?) are not supported; drop the alpha channel: img[..., :3]")
        return x  # (N, H, W) gray
    if x.ndim == 4:
        if x.shape[-1] == 3:
            return x
        if x.shape[-1] == 1:
            return x[..., 0]
        if x.shape[-1] == 4:
            raise ValueError("4 channels (RGBA?) are not supported; drop the alpha channel: images[..., :3]")
        if x.shape[1] in (1, 3):
            raise ValueError(f"images of shape {x.shape} look channels-first (N, C, H, W); pass (N, H, W, C)")
    raise ValueError(f"images must be (N, H, W) gray or (N, H, W, 3) RGB, or one (H, W[, 3]) face; got shape {x.shape}")


def to_uint8_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, H, W, 3) uint8 numpy -> (N, C, H, W) uint8 tensor, no copy of the pixels' order."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3:  # gray -> rgb: repeat
        return x.expand(-1, 3, -1, -1)
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)  # rgb -> gray


def normalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def reframe(x: torch.Tensor, src: Preprocess, dst: Preprocess) -> torch.Tensor:
    """A normalised batch for one model -> the same pictures as another model's input: colour mode, size (the
    eval preset's antialiased bilinear resize) and normalisation of `dst`. Distillation uses it to show the
    student the very view the teacher scored."""
    mean = torch.tensor(src.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(src.std, dtype=x.dtype).view(1, -1, 1, 1)
    x = _match_channels(x * std + mean, dst.channels)
    if x.shape[-1] != dst.size or x.shape[-2] != dst.size:
        x = F.interpolate(x, size=(dst.size, dst.size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x, dst).contiguous()


def to_model_input(images: np.ndarray | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """The eval preset: uint8 images (numpy (N,H,W[,3]) or tensor (N,C,H,W)) -> float (N, C, size, size)."""
    x = to_uint8_tensor(images) if isinstance(images, np.ndarray) else images
    x = _match_channels(x.float() / 255.0, pre.channels)
    if x.shape[-1] != pre.size or x.shape[-2] != pre.size:
        x = F.interpolate(x, size=(pre.size, pre.size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x, pre).contiguous()


def to_uint8_input(images: np.ndarray | torch.Tensor, pre: Preprocess) -> np.ndarray:
    """uint8 images -> uint8 (N, size, size, C) in the model's colour mode and size: what an exported (ONNX)
    model takes. The resize is the eval preset's own (antialiased bilinear), rounded back to 8 bits."""
    x = to_uint8_tensor(images) if isinstance(images, np.ndarray) else images
    if x.shape[1] != pre.channels or x.shape[-1] != pre.size or x.shape[-2] != pre.size:
        y = _match_channels(x.float(), pre.channels)
        if y.shape[-1] != pre.size or y.shape[-2] != pre.size:
            y = F.interpolate(y, size=(pre.size, pre.size), mode="bilinear", align_corners=False, antialias=True)
        x = y.round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def to_pixel_rows(images: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The eval preset flattened for scikit-learn: (N, ...) uint8 images -> float32 (N, C * size * size)."""
    x = to_model_input(images, pre)
    return x.reshape(len(x), -1).numpy()


def _uniform(lo: float, hi: float, n: int, generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _chosen(p: float, n: int, generator) -> torch.Tensor:
    """(n,) bool: which images an augmentation of probability p touches."""
    return torch.rand(n, generator=generator) < p


def jpeg_batch(x_uint8: torch.Tensor, which: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Re-encode the chosen images of a (B, C, H, W) uint8 batch as JPEG at the given qualities (OpenCV)."""
    out = x_uint8.clone()
    for i in torch.nonzero(which).flatten().tolist():
        img = x_uint8[i].permute(1, 2, 0).numpy()  # (H, W, C)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1] if img.shape[2] == 3 else img[..., 0]),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality[i])])  # fmt: skip
        dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        dec = dec[..., ::-1] if dec.ndim == 3 else dec[..., None]
        out[i] = torch.from_numpy(np.ascontiguousarray(dec)).permute(2, 0, 1)
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of a float (B, C, H, W) batch with its own sigma (pixels); sigma 0 leaves it as is."""
    radius = max(1, int(math.ceil(3 * float(sigma.max())))) if len(sigma) else 1
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))  # (B, 2r+1)
    k = torch.where(sigma[:, None] > 0, k, (t[None] == 0).to(x.dtype))
    k = k / k.sum(1, keepdim=True)
    b, c, h, w = x.shape
    y = x.reshape(1, b * c, h, w)
    kh = k.repeat_interleave(c, 0)  # (B*C, 2r+1)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kh[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kh[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def augment_batch(
    x_uint8: torch.Tensor, pre: Preprocess, aug: Augment, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, C, H, W) uint8 -> augmented, normalised float (B, C', size, size).

    Order: JPEG re-encoding (on the uint8 pixels) -> colour mode -> grayscale -> one affine warp that also
    resamples to the model's size (rotation, zoom, shift, flip) -> down-and-up sampling -> blur ->
    brightness, contrast, saturation -> cutout -> normalisation. Every augmentation is the identity at strength
    0, and labels are not touched: the i-th output is a transformed copy of the i-th input.
    """
    # Random numbers are drawn only for the augmentations that are on, so a config without the newer ones
    # draws exactly what it always drew (the same seed gives the same training run as before they existed).
    b = x_uint8.shape[0]
    if aug.jpeg:
        jpeg, quality = _chosen(aug.jpeg, b, generator), _uniform(*aug.jpeg_quality, b, generator).round()
        x_uint8 = jpeg_batch(x_uint8, jpeg, quality)
    x = x_uint8.float() / 255.0
    if aug.grayscale and x.shape[1] == 3:
        gray = _chosen(aug.grayscale, b, generator)
        x = torch.where(gray.view(b, 1, 1, 1), _match_channels(x, 1).expand_as(x), x)
    x = _match_channels(x, pre.channels)
    x = _affine(x, pre.size, aug, generator)
    if aug.lowres:
        low = _chosen(aug.lowres, b, generator)
        side = _uniform(aug.lowres_px[0], aug.lowres_px[1] + 1, b, generator).floor().long()
        x = _down_up(x, low, side)
    if aug.blur:
        blur, sigma = _chosen(aug.blur, b, generator), _uniform(*aug.blur_sigma, b, generator)
        x = gaussian_blur(x, torch.where(blur, sigma, torch.zeros_like(sigma)))
    if aug.contrast or aug.brightness or aug.saturation:
        x = _colour_jitter(x, aug, generator)
    if aug.erase:
        x = _erase(x, aug.erase, generator)
    return normalize(x, pre)


def augment_groups(
    x_uint8: torch.Tensor, pre: Preprocess, augs: Sequence[Augment], group: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`augment_batch` with `augs[group[i]]` for image i: one call per group present, in group order, each
    output row in its input's place. `group` None: `augs[0]` for every image (the draws of `augment_batch`)."""
    if group is None:
        return augment_batch(x_uint8, pre, augs[0], generator)
    out = None
    for g in torch.unique(group).tolist():
        idx = torch.nonzero(group == g).flatten()
        part = augment_batch(x_uint8[idx], pre, augs[g], generator)
        if out is None:
            out = part.new_empty((len(group), *part.shape[1:]))
        out[idx] = part
    return out


def _affine(x: torch.Tensor, size: int, aug: Augment, generator) -> torch.Tensor:
    """Rotation, zoom, shift and flip in one grid_sample call that also resamples to size x size."""
    b = x.shape[0]
    angle = _uniform(-aug.rotation, aug.rotation, b, generator) * (math.pi / 180)
    scale = 1.0 / _uniform(*aug.zoom, b, generator)  # sampling a smaller region = zooming in
    flip = torch.where(torch.rand(b, generator=generator) < aug.flip, -1.0, 1.0)
    tx, ty = _uniform(-2 * aug.shift, 2 * aug.shift, b, generator), _uniform(-2 * aug.shift, 2 * aug.shift, b, generator)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    )  # (B, 2, 3): output coords -> input coords
    grid = F.affine_grid(theta, (b, x.shape[1], size, size), align_corners=False)
    if x.shape[-1] > size:  # a downscale first, as the eval preset makes it (antialiased): identity at strength 0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _down_up(x: torch.Tensor, which: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """The chosen images downsampled to `side` pixels (area) and back up (bilinear): detail lost, size kept."""
    out = x.clone()
    size = x.shape[-1]
    for s in torch.unique(side[which]).tolist():
        idx = torch.nonzero(which & (side == s)).flatten()
        if s < size:
            small = F.interpolate(x[idx], size=(s, s), mode="area")
            out[idx] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return out


def _colour_jitter(x: torch.Tensor, aug: Augment, generator) -> torch.Tensor:
    b = x.shape[0]
    c = _uniform(1 - aug.contrast, 1 + aug.contrast, b, generator).view(b, 1, 1, 1)
    br = _uniform(-aug.brightness, aug.brightness, b, generator).view(b, 1, 1, 1)
    if aug.saturation and x.shape[1] == 3:
        sat = _uniform(1 - aug.saturation, 1 + aug.saturation, b, generator).view(b, 1, 1, 1)
        g = _match_channels(x, 1)
        x = g + (x - g) * sat
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean + br).clamp_(0, 1)


def _erase(x: torch.Tensor, p: float, generator) -> torch.Tensor:
    """Cutout: with probability p, set one random rectangle (10-30% of each side) to the image mean."""
    b, _, h, w = x.shape
    r = torch.rand(b, 5, generator=generator)
    eh = (h * (0.1 + 0.2 * r[:, 0])).long()
    ew = (w * (0.1 + 0.2 * r[:, 1])).long()
    top = (r[:, 2] * (h - eh)).long()
    left = (r[:, 3] * (w - ew)).long()
    yy = torch.arange(h).view(1, h, 1)
    xx = torch.arange(w).view(1, 1, w)
    rows = (yy >= top.view(b, 1, 1)) & (yy < (top + eh).view(b, 1, 1))  # (B, H, 1)
    cols = (xx >= left.view(b, 1, 1)) & (xx < (left + ew).view(b, 1, 1))  # (B, 1, W)
    box = rows & cols & (r[:, 4] < p).view(b, 1, 1)  # (B, H, W)
    return torch.where(box.unsqueeze(1), x.mean(dim=(1, 2, 3), keepdim=True), x)


# ------------------------------------------------------------------------------------------ corruptions
# Fixed corruptions of uint8 images for the robustness evaluation, in the spirit of ImageNet-C: each is
# deterministic (the same images always get the same corruption) and keeps the images' size and mode.


def _rgb(images: np.ndarray) -> np.ndarray:
    return images if images.ndim == 4 else np.repeat(images[..., None], 3, axis=3)


def _like(out: np.ndarray, images: np.ndarray) -> np.ndarray:
    return out if images.ndim == 4 else out[..., 0]


def _per_image(images: np.ndarray, fn) -> np.ndarray:
    return np.stack([fn(i, img) for i, img in enumerate(images)]) if len(images) else images.copy()


def _warp(images: np.ndarray, matrix_for) -> np.ndarray:
    def one(i, img):
        h, w = img.shape[:2]
        return cv2.warpAffine(img, matrix_for(i, w, h), (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    return _per_image(images, one)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """The image (gray, or RGB: OpenCV encodes BGR) re-encoded as JPEG at `quality`, as `jpeg_batch` does."""
    rgb = img.ndim == 3
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]) if rgb else img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(dec[..., ::-1]) if rgb else dec


CORRUPTIONS = {
    # every image gray (its three channels equal)
    "grayscale": lambda im: _like(np.repeat(np.rint(_rgb(im) @ np.array(_GRAY_WEIGHTS))[..., None], 3, 3)
                                  .astype(np.uint8), im) if im.ndim == 4 else im.copy(),
    # down to 48 px (area) and back up (bilinear): FER2013's resolution
    "lowres48": lambda im: _per_image(im, lambda i, x: cv2.resize(cv2.resize(x, (48, 48), interpolation=cv2.INTER_AREA),
                                                                  x.shape[1::-1], interpolation=cv2.INTER_LINEAR)),
    "jpeg30": lambda im: _per_image(im, lambda i, x: _jpeg(x, 30)),
    # Gaussian blur, sigma 1.5 px at 96 px (scaled with the image)
    "blur": lambda im: _per_image(im, lambda i, x: cv2.GaussianBlur(x, (0, 0), 1.5 * x.shape[0] / 96)),
    # additive Gaussian noise, sigma 0.05 in [0, 1] pixel units, fixed seed
    "noise": lambda im: np.clip(im + np.random.default_rng(0).normal(0, 0.05 * 255, im.shape), 0, 255).astype(np.uint8),
    # rotated by +15 and -15 degrees, alternately
    "rotate15": lambda im: _warp(im, lambda i, w, h: cv2.getRotationMatrix2D((w / 2, h / 2), 15 if i % 2 else -15, 1.0)),
    # the crop shifted by 10% of its side, in one of four directions in turn
    "offcentre": lambda im: _warp(im, lambda i, w, h: np.float32([[1, 0, 0.1 * w * (1, -1, 0, 0)[i % 4]],
                                                                  [0, 1, 0.1 * h * (0, 0, 1, -1)[i % 4]]])),
}  # fmt: skip


def corrupt(images: np.ndarray, name: str) -> np.ndarray:
    """One of `CORRUPTIONS` applied to uint8 (N, H, W[, 3]) images; same shape and dtype out."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    return np.ascontiguousarray(CORRUPTIONS[name](images), np.uint8)
