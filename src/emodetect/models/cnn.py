"""Networks trained from scratch: the study's 4-block CNN, a small ResNet, and a tiny model for tests.

Every network exposes ``forward_features(x) -> (B, D)`` (the embedding used by the embedding analysis and
the CNN+SVM ensemble) and ``forward_head(features) -> logits``, as timm does.
"""

from __future__ import annotations

from torch import nn

from emodetect.data.transforms import Preprocess
from emodetect.models.registry import register_model

GRAY96 = Preprocess(size=96, mode="gray", mean=(0.5,), std=(0.5,))


class SeedCNN(nn.Module):
    """The published study's network: 4 x (Conv3x3 -> ReLU -> MaxPool -> BatchNorm -> Dropout) -> dense head.

    Dropout rises from 0.2 in the first block to 0.6 in the head; L2 regularisation is the optimiser's
    weight decay.
    """

    def __init__(self, num_classes=8, in_chans=1, img_size=96, widths=(32, 64, 128, 256),
                 dropouts=(0.2, 0.3, 0.4, 0.5), hidden=256, head_dropout=0.6):  # fmt: skip
        super().__init__()
        layers, c = [], in_chans
        for w, p in zip(widths, dropouts):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.BatchNorm2d(w),
                       nn.Dropout(p)]  # fmt: skip
            c = w
        self.features = nn.Sequential(*layers)
        side = img_size // 2 ** len(widths)
        # at the designed size the map is side x side already (the pool is the identity); other input sizes
        # (TrainConfig.image_size) are pooled to it, so the dense layer fits any input
        self.fit_size = nn.AdaptiveAvgPool2d(side)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(hidden, num_classes))
        self.num_features = hidden

    def forward_features(self, x):
        return self.embed(self.fit_size(self.features(x)))  # (B, hidden): the last hidden layer

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    """A ResNet-18-style network sized for 96x96 faces: a stride-2 stem and a max-pool (24x24 maps, as in
    ResNet-18), then 4 stages of basic blocks (24, 12, 6, 3)."""

    def __init__(self, num_classes=8, in_chans=1, widths=(32, 64, 128, 256), depths=(2, 2, 2, 2), dropout=0.3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, c = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                stages.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: every block starts as identity
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x):
        return self.pool(self.stages(self.stem(x)))

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class TinyNet(nn.Module):
    """Two convolutions and a linear layer: for tests, trains in seconds on 32x32 images."""

    def __init__(self, num_classes=8, in_chans=1, width=8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, num_classes)
        self.num_features = 2 * width

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model("cnn_seed", preprocess=GRAY96, description="the study's 4-block CNN (grayscale 96x96)",
                defaults={"hidden": 256, "head_dropout": 0.6, "widths": (32, 64, 128, 256)})  # fmt: skip
def cnn_seed(num_classes=8, pretrained=False, hidden=256, head_dropout=0.6, widths=(32, 64, 128, 256)):
    return SeedCNN(num_classes, hidden=hidden, head_dropout=head_dropout, widths=tuple(widths))


@register_model("resnet", preprocess=GRAY96, description="ResNet-18-style network from scratch (grayscale 96x96)",
                defaults={"widths": (32, 64, 128, 256), "depths": (2, 2, 2, 2), "dropout": 0.3})  # fmt: skip
def resnet(num_classes=8, pretrained=False, widths=(32, 64, 128, 256), depths=(2, 2, 2, 2), dropout=0.3):
    return ResNet(num_classes, widths=tuple(widths), depths=tuple(depths), dropout=dropout)


@register_model("tiny", preprocess=Preprocess(size=32, mode="gray", mean=(0.5,), std=(0.5,)),
                description="a tiny network for tests", defaults={"width": 8})  # fmt: skip
def tiny(num_classes=8, pretrained=False, width=8):
    return TinyNet(num_classes, width=width)
