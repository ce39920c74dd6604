"""A small network built for CPU throughput, trained by distillation from the default model.

FastNet: a MobileNetV2-style stack of inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project,
batch norm and ReLU6) on 64x64 faces, with a stride-2 stem and four stages down to 2x2 maps, then global
average pooling and a linear head. Everything is a plain convolution, batch norm or pooling, so it fuses
and exports to ONNX cleanly. `widths` and `expand` trade speed for accuracy. The defaults were picked by ONNX Runtime speed on 2 cores
(random weights, batch 256, training paused): 0.31M parameters at 64 px ran 8,100 faces/s, these 0.96M
5,000 faces/s (3.8 MB), 1.0M with more blocks 3,400 faces/s; bench/bench_fast.py measures the trained model.
"""

from __future__ import annotations

from torch import nn

from emodetect.data.transforms import Preprocess
from emodetect.models.registry import register_model

FAST_RGB64 = Preprocess(size=64, mode="rgb", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.body = nn.Sequential(
            _conv_bn(c_in, mid) if expand != 1 else nn.Identity(),
            _conv_bn(mid, mid, 3, stride, groups=mid),
            _conv_bn(mid, c_out, act=False),
        )  # fmt: skip
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class FastNet(nn.Module):
    """stem (stride 2) -> one stage per width, each starting with stride 2 -> 1x1 head conv -> GAP -> linear."""

    def __init__(self, num_classes=8, in_chans=3, widths=(16, 32, 64, 128, 192), depths=(1, 2, 3, 2),
                 expand=4, head=512, dropout=0.1):  # fmt: skip
        super().__init__()
        self.stem = _conv_bn(in_chans, widths[0], 3, 2)
        blocks, c = [], widths[0]
        for w, d in zip(widths[1:], depths):
            for j in range(d):
                blocks.append(InvertedResidual(c, w, 2 if j == 0 else 1, expand))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = _conv_bn(c, head)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)
        self.num_features = head
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward_features(self, x):
        return self.pool(self.head_conv(self.blocks(self.stem(x))))  # (B, head)

    def forward_head(self, f):
        return self.fc(self.dropout(f))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model("fastnet", preprocess=FAST_RGB64, description="FastNet, a small inverted-residual network for CPU "
                "throughput (RGB 64x64), distilled from the default model",
                defaults={"widths": (16, 32, 64, 128, 192), "depths": (1, 2, 3, 2), "expand": 4, "head": 512,
                          "dropout": 0.1})  # fmt: skip
def fastnet(num_classes=8, pretrained=False, widths=(16, 32, 64, 128, 192), depths=(1, 2, 3, 2), expand=4, head=512,
            dropout=0.1):  # fmt: skip
    return FastNet(num_classes, widths=tuple(widths), depths=tuple(depths), expand=expand, head=head, dropout=dropout)
