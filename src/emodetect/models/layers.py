"""Small layers shared by the network definitions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's 'SAME' padding: asymmetric (more on the right/bottom) when the total is odd.

    Weights ported from TensorFlow/Keras need it to reproduce their outputs exactly.
    """
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (computed from the input size at run time)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, **kwargs):
        super().__init__(in_ch, out_ch, kernel, stride, padding=0, **kwargs)

    def forward(self, x):
        return super().forward(tf_same_pad(x, self.kernel_size[0], self.stride[0]))


class SameMaxPool2d(nn.Module):
    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        return F.max_pool2d(tf_same_pad(x, self.kernel, self.stride, value=float("-inf")), self.kernel, self.stride)


def output_bias(model: nn.Module) -> torch.Tensor:
    """The bias of a network's output layer (the last Linear or Conv2d it registers): the class scores' offsets.

    Every network here ends in that layer or in it followed by average pooling, so adding a vector to this bias
    adds exactly that vector to the logits (tested for every registered network).
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers or layers[-1].bias is None:
        raise ValueError(f"{type(model).__name__} has no output layer with a bias")
    return layers[-1].bias
