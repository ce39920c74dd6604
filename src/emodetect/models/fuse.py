"""The exact fast path for inference: the same network, rewritten once at load time for CPU speed.

- TensorFlow-style 'SAME' padding is computed for the model's fixed input size once; where it is
  symmetric it becomes the convolution's own padding (exact), elsewhere a fixed zero-pad layer;
- every BatchNorm that follows a convolution is folded into it (eval mode: an affine map, so exact up to
  float rounding);
- the mirror average runs as one batch of 2N instead of two passes;
- weights and activations in channels_last (NHWC), which oneDNN's CPU convolutions prefer.
The fused model's outputs equal the original's within 1e-5 (tests/test_fuse.py).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from emodetect.models.layers import SameConv2d, SameMaxPool2d


def _same_pads(size_hw: tuple[int, int], kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) of TF 'SAME' padding for an input of this height and width."""
    pads = []
    for size in (size_hw[1], size_hw[0]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class _StaticSameConv(nn.Module):
    """A SameConv2d at a known input size: symmetric padding inside the conv, asymmetric as a pad layer."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__()
        left, right, top, bottom = pads
        sym = left == right and top == bottom
        self.pad = None if sym or not any(pads) else nn.ZeroPad2d(pads)
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              padding=(top, left) if sym else 0, groups=conv.groups, bias=conv.bias is not None)  # fmt: skip
        self.conv.load_state_dict(conv.state_dict())

    def forward(self, x):
        return self.conv(x if self.pad is None else self.pad(x))


class _StaticSameMaxPool(nn.Module):
    def __init__(self, pool: SameMaxPool2d, pads: tuple[int, int, int, int]):
        super().__init__()
        self.pads, self.kernel, self.stride = pads, pool.kernel, pool.stride

    def forward(self, x):
        return F.max_pool2d(F.pad(x, self.pads, value=float("-inf")) if any(self.pads) else x, self.kernel, self.stride)


def _input_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """The spatial size each SAME-padded layer sees for this input size (recorded by forward hooks)."""
    sizes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (SameConv2d, SameMaxPool2d)):
            hooks.append(m.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, args[0].shape[-2:])))
    with torch.inference_mode():
        model(example)
    for h in hooks:
        h.remove()
    return {k: tuple(v) for k, v in sizes.items()}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution that computes bn(conv(x)) in eval mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True)  # fmt: skip
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    fused.weight.data = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    fused.bias.data = (bias - bn.running_mean) * scale + bn.bias
    return fused


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the BatchNorm directly follows the convolution in a forward pass."""
    order, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            hooks.append(m.register_forward_hook(lambda mod, args, out, name=name: order.append((name, args[0], out))))
    return order, hooks


def fuse(model: nn.Module, size: int, channels: int) -> nn.Module:
    """A copy of `model` (eval mode) rewritten for inference at size x size; the original is not touched."""
    model = copy.deepcopy(model).eval()
    example = torch.zeros(1, channels, size, size)
    for name, hw in _input_sizes(model, example).items():
        m = model.get_submodule(name)
        if isinstance(m, SameConv2d):
            _replace(model, name, _StaticSameConv(m, _same_pads(hw, m.kernel_size[0], m.stride[0])))
        else:
            _replace(model, name, _StaticSameMaxPool(m, _same_pads(hw, m.kernel, m.stride)))
    order, hooks = _conv_bn_pairs(model)
    with torch.inference_mode():
        model(example)
    for h in hooks:
        h.remove()
    for (conv_name, _, conv_out), (bn_name, bn_in, _) in zip(order, order[1:]):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn_in is conv_out:
            _replace(model, conv_name, _fold_bn(conv, bn))
            _replace(model, bn_name, nn.Identity())
    return model.to(memory_format=torch.channels_last).eval()


class MirrorAveraged(nn.Module):
    """Logits averaged over each image and its horizontal mirror, in one batch of 2N."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        n = x.shape[0]
        y = self.model(torch.cat([x, torch.flip(x, dims=[3])]))
        return (y[:n] + y[n:]) / 2
