"""Configuration: one dataclass per stage; defaults < config file (JSON) < command line.

Every value is checked when a config is built, so a bad option is one clear error before any work starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from emodetect.errors import EmodetectError
from emodetect.labels import canonical_label

LABEL_SOURCES = ("folder", "csv")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "plateau", "constant")
MONITORS = ("val_accuracy", "val_macro_f1")


def _fail(owner: str, name: str, rule: str, value) -> None:
    raise EmodetectError(f"{owner} option {name} must be {rule}, got {value!r}")


def _number(owner, name, v, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False) -> None:
    try:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        ok = False
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        high = f" and < {hi:g}" if hi_open else f" and <= {hi:g}" if hi < math.inf else ""
        _fail(owner, name, f"a number {low}{high}", v)


def _integer(owner, name, v, lo=0, hi=2**31, none_ok=False) -> None:
    if v is None and none_ok:
        return
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        _fail(owner, name, f"a whole number from {lo} to {hi}" + (" (or null)" if none_ok else ""), v)


def _choice(owner, name, v, choices) -> None:
    if v not in choices:
        _fail(owner, name, f"one of {', '.join(choices)}", v)


def _flag(owner, name, v) -> None:
    if not isinstance(v, bool):
        _fail(owner, name, "true or false", v)


@dataclass(frozen=True)
class DataConfig:
    label_source: str = "folder"
    relfcs_max: float | None = None
    split_seed: int | None = 0  # None (evaluate only): the seed the model was trained with
    limit_per_class: int | None = None  # keep at most this many train images per class (quick runs)

    def __post_init__(self):
        _choice("data", "label_source", self.label_source, LABEL_SOURCES)
        if self.relfcs_max is not None:
            _number("data", "relfcs_max", self.relfcs_max, 0, 1, lo_open=True)
        _integer("data", "split_seed", self.split_seed, none_ok=True)
        _integer("data", "limit_per_class", self.limit_per_class, lo=1, none_ok=True)


def _range(owner, name, v, lo, hi) -> tuple:
    if not (isinstance(v, (list, tuple)) and len(v) == 2):
        _fail(owner, name, "two numbers [low, high]", v)
    for x in v:
        _number(owner, name, x, lo, hi)
    if v[0] > v[1]:
        _fail(owner, name, "[low, high] with low <= high", v)
    return tuple(v)


@dataclass(frozen=True)
class Augment:
    """The train-time augmentation, applied to whole batches (see `emodetect.data.transforms.augment_batch`).

    Geometry: rotation, zoom, shift (framing jitter) and horizontal flip. Photometric: brightness, contrast
    and saturation jitter. Against source shortcuts (each a probability per image; 0 turns it off): turning
    an image gray, down-and-up sampling to a few dozen pixels, JPEG re-encoding, Gaussian blur. Cutout.
    """

    rotation: float = 15.0  # degrees, uniform in [-r, r]
    zoom: tuple[float, float] = (0.9, 1.15)  # > 1 zooms in
    shift: float = 0.08  # fraction of the image size
    flip: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.2  # additive, in [0, 1] pixel units
    contrast: float = 0.2  # multiplicative around the image mean
    saturation: float = 0.0  # factor uniform in [1 - s, 1 + s] around each pixel's gray value
    erase: float = 0.0  # probability of erasing one random rectangle (cutout)
    grayscale: float = 0.0  # probability of turning an image gray
    lowres: float = 0.0  # probability of down-and-up sampling to a side uniform in lowres_px
    lowres_px: tuple[int, int] = (32, 64)
    jpeg: float = 0.0  # probability of re-encoding as JPEG at a quality uniform in jpeg_quality
    jpeg_quality: tuple[int, int] = (30, 90)
    blur: float = 0.0  # probability of a Gaussian blur with sigma (in pixels of the model input) in blur_sigma
    blur_sigma: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self):
        object.__setattr__(self, "zoom", _range("augment", "zoom", self.zoom, 0.01, 10))
        object.__setattr__(self, "lowres_px", _range("augment", "lowres_px", self.lowres_px, 4, 512))
        object.__setattr__(self, "jpeg_quality", _range("augment", "jpeg_quality", self.jpeg_quality, 1, 100))
        object.__setattr__(self, "blur_sigma", _range("augment", "blur_sigma", self.blur_sigma, 0.01, 20))
        _number("augment", "rotation", self.rotation, 0, 180)
        _number("augment", "shift", self.shift, 0, 1)
        for name in ("flip", "brightness", "contrast", "saturation", "erase", "grayscale", "lowres", "jpeg", "blur"):
            _number("augment", name, getattr(self, name), 0, 1)

    @classmethod
    def from_dict(cls, d: dict) -> Augment:
        return cls(**merge_dict(asdict(cls()), d, "augment"))


def teacher_names(teacher) -> list:
    """The `teacher` option as a list of models (one model, or an ensemble's members); [] for none."""
    return [] if teacher is None else [teacher] if isinstance(teacher, str) else list(teacher)


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
    # after training, fold -log(the loss's class tilt) into the output bias (training.loop.prior_offsets): the
    # class-weighted fit then predicts under the train split's own class mix (plain accuracy, fewer rare-class
    # false alarms); off by default, so the study's models stay as published
    prior_correction: bool = False
    oversample: dict = field(default_factory=dict)  # class name -> sampling factor (>1 shows it more often)
    source_weights: dict = field(default_factory=dict)  # dataset name -> sampling factor of its images
    # group-balanced sampling against the file-format shortcut: within each dataset's class, every file format
    # gets up to an equal share of the class's draws, no image drawn more than this many times as often as
    # otherwise; the class's own share is unchanged (training.loop.format_factors). 0 turns it off
    format_balance: float = 0.0
    augment: dict = field(default_factory=lambda: asdict(Augment()))
    # dataset name -> augment options that differ for its images, on top of `augment` (for example
    # {"fer2013": {"jpeg": 0, "lowres": 0, "blur": 0}}: faces already small, gray and compressed are not degraded
    # further); each dataset's images are augmented with their own settings within a batch
    augment_by_source: dict = field(default_factory=dict)
    patience: int = 8  # early stopping: epochs without improvement of `monitor`
    monitor: str = "val_accuracy"
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast: fast only on CPUs with native bf16 (AVX512-BF16, AMX); see bench/
    channels_last: bool = True
    tta_flip: bool = True  # average the logits of the image and its mirror at evaluation
    # distil from this model ("default", a model file or a run folder), or from a list of them: an ensemble, whose
    # soft targets are the mean of its members' logits (clean views only)
    teacher: str | list[str] | None = None
    distill_alpha: float = 0.7  # weight of the teacher's soft targets; 1 - alpha on the labels
    distill_temperature: float = 3.0  # softmax temperature of both sides in the soft-target term
    # "clean": the teacher scores each clean train image once, before training; "augmented": it scores every
    # augmented batch the student sees (the same view, at the teacher's own size: sizes in `augment`, such as
    # blur_sigma, are then in the teacher's pixels): consistent targets, one teacher forward pass more per batch
    distill_views: str = "clean"
    # start from this model's weights ("default", a model file or a run folder) for every layer whose weights all
    # have the same names and shapes in it (a network cut from the same backbone takes its trained blocks whole);
    # the rest as built (training.loop.init_from)
    init_from: str | None = None
    # exponential moving average of the weights (and BatchNorm statistics), updated after every step with this
    # decay (warmed up as timm does: min(decay, (1 + n) / (10 + n)) at update n); the average is what is
    # evaluated, early-stopped and kept. 0 turns it off (training.loop.WeightEma)
    ema_decay: float = 0.0

    def __post_init__(self):
        o = "train"
        if not isinstance(self.model, str):
            _fail(o, "model", "a model name", self.model)
        if not isinstance(self.model_kwargs, dict):
            _fail(o, "model_kwargs", "an object", self.model_kwargs)
        _integer(o, "image_size", self.image_size, lo=16, hi=512, none_ok=True)
        _integer(o, "epochs", self.epochs, lo=1, hi=10_000)
        _integer(o, "batch_size", self.batch_size, lo=1, hi=65_536)
        _choice(o, "optimizer", self.optimizer, OPTIMIZERS)
        _number(o, "lr", self.lr, 0, 10)
        _number(o, "weight_decay", self.weight_decay, 0, 10)
        _choice(o, "schedule", self.schedule, SCHEDULES)
        _number(o, "warmup_epochs", self.warmup_epochs, 0, 10_000)
        _number(o, "label_smoothing", self.label_smoothing, 0, 1, hi_open=True)
        _number(o, "mixup", self.mixup, 0, 100)
        _integer(o, "patience", self.patience, lo=1, hi=10_000)
        _choice(o, "monitor", self.monitor, MONITORS)
        _integer(o, "seed", self.seed)
        for name in ("class_weights", "prior_correction", "bf16", "channels_last", "tta_flip"):
            _flag(o, name, getattr(self, name))
        if not isinstance(self.oversample, dict):
            _fail(o, "oversample", 'an object such as {"disgust": 1.5}', self.oversample)
        canon = {}
        for name, factor in self.oversample.items():
            c = canonical_label(str(name))
            if c is None:
                _fail(o, "oversample", "keyed by emotion names (aliases such as 'angry' are fine)", name)
            _number(o, f"oversample[{name!r}]", factor, 0, 1000, lo_open=True)
            canon[c] = float(factor)
        object.__setattr__(self, "oversample", canon)
        if self.teacher is not None:
            names = [self.teacher] if isinstance(self.teacher, str) else self.teacher  # as given: checked below
            if not isinstance(names, list) or not names or not all(isinstance(t, str) and t.strip() for t in names):
                _fail(o, "teacher", 'a model ("default", a model file or a run folder), a list of them, or null',
                      self.teacher)
            if len(names) > 1 and self.distill_views != "clean":
                _fail(o, "teacher", 'one model where distill_views is "augmented"', self.teacher)
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            _fail(o, "init_from", 'a model ("default", a model file or a run folder) or null', self.init_from)
        _number(o, "distill_alpha", self.distill_alpha, 0, 1)
        _number(o, "distill_temperature", self.distill_temperature, 0, 100, lo_open=True)
        _choice(o, "distill_views", self.distill_views, ("clean", "augmented"))
        _number(o, "ema_decay", self.ema_decay, 0, 1, hi_open=True)  # 0 turns it off
        if self.format_balance != 0:
            _number(o, "format_balance", self.format_balance, 1, 1000)
        if not isinstance(self.source_weights, dict):
            _fail(o, "source_weights", 'an object such as {"fer2013-train": 0.5}', self.source_weights)
        for name, factor in self.source_weights.items():
            _number(o, f"source_weights[{name!r}]", factor, 0, 1000, lo_open=True)
        if not isinstance(self.augment, dict):
            _fail(o, "augment", "an object of augmentation settings", self.augment)
        object.__setattr__(self, "augment", asdict(Augment.from_dict(self.augment)))
        if not isinstance(self.augment_by_source, dict):
            _fail(o, "augment_by_source", 'an object such as {"fer2013": {"jpeg": 0}}', self.augment_by_source)
        by_source = {}
        for name, d in self.augment_by_source.items():  # the overrides only, checked and normalised
            full = asdict(Augment(**merge_dict(self.augment, d, f"augment_by_source[{name!r}]")))
            by_source[str(name)] = {k: full[k] for k in d}
        object.__setattr__(self, "augment_by_source", by_source)

    def augmentation(self) -> Augment:
        return Augment(**self.augment)

    def augmentation_for(self, source: str) -> Augment:
        """The augmentation of one dataset's images: `augment` with that dataset's `augment_by_source` on top."""
        return Augment(**{**self.augment, **self.augment_by_source.get(source, {})})


def merge_dict(base: dict, overrides: dict, owner: str) -> dict:
    """`base` with `overrides` on top; a key that `base` does not have is an error naming the known keys."""
    if not isinstance(overrides, dict):
        raise EmodetectError(f"{owner} options must be an object, got {overrides!r}")
    unknown = set(overrides) - set(base)
    if unknown:
        raise EmodetectError(f"unknown {owner} option(s): {', '.join(sorted(map(str, unknown)))}; "
                             f"known: {', '.join(sorted(base))}")  # fmt: skip
    return {**base, **overrides}


def merge(base, overrides: dict):
    """A copy of a config dataclass with `overrides` applied (unknown keys are an error), validated."""
    names = {f.name for f in fields(base)}
    merge_dict(dict.fromkeys(names), overrides, type(base).__name__)
    return replace(base, **overrides)


def load_json(path: str | Path) -> dict:
    """A JSON config file whose top level is an object."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a named pipe or a device: never read (it could hang)
        raise EmodetectError(f"config file {path} is not a regular file")
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise EmodetectError(f"config file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EmodetectError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EmodetectError(f"config file {path} must hold a JSON object at the top, got {type(value).__name__}")
    return value


def parse_overrides(items: list[str] | None) -> dict:
    """`--set key=value` pairs; values are parsed as JSON when they can be (numbers, lists, true/false)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise EmodetectError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            out[key.strip()] = value
    return out
