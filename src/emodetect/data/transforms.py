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


@dataclass(frozen=True)
class Augment:
    """The train preset: random rotation, zoom, shift and horizontal flip, plus brightness/contrast jitter."""

    rotation: float = 15.0  # degrees, uniform in [-r, r]
    zoom: tuple[float, float] = (0.9, 1.15)  # > 1 zooms in
    shift: float = 0.08  # fraction of the image size
    flip: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.2  # additive, in [0, 1] pixel units
    contrast: float = 0.2  # multiplicative around the image mean
    erase: float = 0.0  # probability of erasing one random rectangle (cutout)

    def to_dict(self) -> dict:
        return asdict(self)


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
