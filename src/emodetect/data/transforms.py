"""The one home for preprocessing: uint8 images -> normalised model input, and batched train augmentation.

Prediction, evaluation, training and export all go through `to_model_input` with a model's `Preprocess`;
nothing else resizes, converts colour or normalises. Augmentation runs on whole batches with torch ops
(one affine grid per batch), so it never starves the model on CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
        images = images.detach().cpu().numpy()
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


def to_model_input(images: np.ndarray | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """The eval preset: uint8 images (numpy (N,H,W[,3]) or tensor (N,C,H,W)) -> float (N, C, size, size)."""
    x = to_uint8_tensor(images) if isinstance(images, np.ndarray) else images
    x = _match_channels(x.float() / 255.0, pre.channels)
    if x.shape[-1] != pre.size or x.shape[-2] != pre.size:
        x = F.interpolate(x, size=(pre.size, pre.size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x, pre).contiguous()


def augment_batch(
    x_uint8: torch.Tensor, pre: Preprocess, aug: Augment, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, C, H, W) uint8 -> augmented, normalised float (B, C', size, size) in one grid_sample call.

    The affine warp also resamples to the model's size, so resizing costs nothing extra. Labels are not
    touched: the i-th output is a transformed copy of the i-th input.
    """
    b = x_uint8.shape[0]
    x = _match_channels(x_uint8.float() / 255.0, pre.channels)

    def uniform(lo, hi, n=b):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-aug.rotation, aug.rotation) * (math.pi / 180)
    scale = 1.0 / uniform(*aug.zoom)  # sampling a smaller region = zooming in
    flip = torch.where(torch.rand(b, generator=generator) < aug.flip, -1.0, 1.0)
    tx, ty = uniform(-2 * aug.shift, 2 * aug.shift), uniform(-2 * aug.shift, 2 * aug.shift)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    )  # (B, 2, 3): output coords -> input coords
    grid = F.affine_grid(theta, (b, x.shape[1], pre.size, pre.size), align_corners=False)
    if x.shape[-1] > 2 * pre.size:  # a big downscale aliases without a low-pass first
        x = F.interpolate(x, size=(2 * pre.size, 2 * pre.size), mode="bilinear", antialias=True)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    if aug.contrast or aug.brightness:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        c = uniform(1 - aug.contrast, 1 + aug.contrast).view(b, 1, 1, 1)
        br = uniform(-aug.brightness, aug.brightness).view(b, 1, 1, 1)
        x = ((x - mean) * c + mean + br).clamp_(0, 1)
    if aug.erase:
        x = _erase(x, aug.erase, generator)
    return normalize(x, pre)


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
