"""Configuration: one dataclass per stage; defaults < config file (JSON) < command line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from emodetect.data.transforms import Augment
from emodetect.errors import EmodetectError


@dataclass(frozen=True)
class DataConfig:
    label_source: str = "folder"
    relfcs_max: float | None = None
    split_seed: int = 0
    limit_per_class: int | None = None  # keep at most this many train images per class (quick runs)


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained. Every field is honoured by `emodetect.training.fit`."""

    model: str = "cnn_seed"
    model_kwargs: dict = field(default_factory=dict)
    image_size: int | None = None  # None: the model's own input size
    epochs: int = 40
    batch_size: int = 64
    optimizer: str = "adamw"  # "adam" (L2 added to the loss, as Keras does), "adamw" or "sgd"
    lr: float = 1e-3
    weight_decay: float = 1e-4  # L2 strength
    schedule: str = "cosine"  # "cosine", "onecycle", "plateau" or "constant"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) mixing; 0 turns it off
    class_weights: bool = True  # balanced weights from the train split's labels
    oversample: dict = field(default_factory=dict)  # class name -> sampling factor (>1 shows it more often)
    augment: dict = field(default_factory=lambda: asdict(Augment()))
    patience: int = 8  # early stopping: epochs without improvement of `monitor`
    monitor: str = "val_accuracy"
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast: fast only on CPUs with native bf16 (AVX512-BF16, AMX); see bench/
    channels_last: bool = True
    tta_flip: bool = True  # average the logits of the image and its mirror at evaluation

    def augmentation(self) -> Augment:
        return Augment(**{**asdict(Augment()), **self.augment})


def _coerce(cls, values: dict):
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise EmodetectError(f"unknown {cls.__name__} option(s): {', '.join(sorted(unknown))}")
    return cls(**values)


def merge(base, overrides: dict):
    """A copy of a config dataclass with `overrides` applied (unknown keys are an error)."""
    names = {f.name for f in fields(base)}
    unknown = set(overrides) - names
    if unknown:
        raise EmodetectError(f"unknown {type(base).__name__} option(s): {', '.join(sorted(unknown))}")
    return replace(base, **overrides)


def load_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EmodetectError(f"config file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise EmodetectError(f"config file {path} is not valid JSON: {exc}") from None


def parse_overrides(items: list[str] | None) -> dict:
    """`--set key=value` pairs; values are parsed as JSON when they can be (numbers, lists, true/false)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise EmodetectError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
