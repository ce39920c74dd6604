"""One registry for every model in the project, classical pipelines and networks alike.

A spec says how to build the model and what it eats (its `Preprocess`), so training, evaluation, export and
the shipped artifact never guess. Modules register themselves on import; `_load_all` imports them lazily
so that `import emodetect` stays fast and quiet.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from emodetect.config import TrainConfig, merge
from emodetect.data.transforms import Preprocess
from emodetect.errors import EmodetectError

_MODULES = ("emodetect.models.classical", "emodetect.models.cnn", "emodetect.models.efficientnet_lite",
            "emodetect.models.mini_xception", "emodetect.models.fast")  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "torch" or "sklearn"
    builder: Callable
    preprocess: Preprocess
    description: str = ""
    pretrained: str | None = None  # where pretrained weights come from, if any
    defaults: dict = field(default_factory=dict)  # hyperparameters the builder takes, with their defaults
    channels_last: bool = True  # NHWC is much faster on CPU; off where torch's CPU kernels misbehave with it
    licence: str | None = None  # licence of the pretrained weights the model starts from, if any


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, kind: str = "torch", preprocess: Preprocess = Preprocess(), description: str = "",
                   pretrained: str | None = None, defaults: dict | None = None, channels_last: bool = True,
                   licence: str | None = None):  # fmt: skip
    def wrap(builder):
        _REGISTRY[name] = ModelSpec(name, kind, builder, preprocess, description, pretrained, dict(defaults or {}),
                                    channels_last, licence)  # fmt: skip
        return builder

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def list_models(kind: str | None = None) -> list[str]:
    _load_all()
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def get_spec(name: str) -> ModelSpec:
    _load_all()
    if name not in _REGISTRY:
        raise EmodetectError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs):
    """Build a model by name; keyword arguments override the spec's defaults (unknown ones are an error)."""
    spec = get_spec(name)
    unknown = set(kwargs) - set(spec.defaults) - {"num_classes", "pretrained"}
    if unknown:
        raise EmodetectError(
            f"model {name!r} takes no option(s) {', '.join(sorted(unknown))}; it takes: {', '.join(sorted(spec.defaults))}"
        )
    return spec.builder(**{**spec.defaults, **kwargs})


@dataclass(frozen=True)
class ModelConfig:
    """A model name resolved once into everything the rest of the package needs, and passed down as is.

    params: a `TrainConfig` for networks, the pipeline's parameters (defaults plus overrides) for
    scikit-learn models. preprocess: what the model eats (a network's `image_size` applied).
    """

    spec: ModelSpec
    params: TrainConfig | dict
    preprocess: Preprocess
    channels_last: bool  # train and run in NHWC

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def to_dict(self) -> dict:
        """The config as plain JSON values, as recorded in metrics.json and compared to decide on reuse."""
        raw = self.params if isinstance(self.params, dict) else asdict(self.params)
        return json.loads(json.dumps(raw))


def _option_ok(value, default) -> bool:
    """A network option next to its default: the same kind of value, within 16 times the default's size."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) and len(value) == len(default) and \
            all(_option_ok(v, d) for v, d in zip(value, default))  # fmt: skip
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        if not math.isfinite(value):
            return False
    except OverflowError:
        return False
    if isinstance(default, float) and 0 <= default <= 1:  # a rate or probability (dropout, drop_path)
        return 0 <= value < 1
    if isinstance(default, int):
        return isinstance(value, int) and 1 <= value <= max(16 * default, 16)
    return 0 <= value <= 16 * abs(default)


def check_model_options(spec: ModelSpec, options: dict, where: str = "") -> None:
    """A network's options (model_kwargs) by name and value, before anything is built from them."""
    if not isinstance(options, dict):
        raise EmodetectError(f"{where}model options must be an object")
    unknown = set(options) - set(spec.defaults)
    if unknown:
        raise EmodetectError(f"{where}model {spec.name!r} takes no option(s) {', '.join(sorted(map(str, unknown)))[:200]}; "
                             f"it takes: {', '.join(sorted(spec.defaults)) or 'none'}")  # fmt: skip
    for key, value in options.items():
        if not _option_ok(value, spec.defaults[key]):
            raise EmodetectError(f"{where}model option {key}={str(value)[:60]} is not valid for {spec.name!r} "
                                 f"(default {spec.defaults[key]!r}; numbers up to 16 times the default)")  # fmt: skip


def resolve_model_config(model: str, params: dict | None = None) -> ModelConfig:
    """The full configuration of `model` with `params` applied; unknown models and options are errors."""
    spec = get_spec(model)
    params = dict(params or {})
    if "model" in params and params["model"] != model:
        raise EmodetectError(f"the model is {model!r}: it is named on the command line, not with --set model=...")
    if spec.kind == "torch":
        cfg = merge(TrainConfig(model=model), params)
        check_model_options(spec, cfg.model_kwargs)
        pre = spec.preprocess
        if cfg.image_size:
            pre = Preprocess(cfg.image_size, pre.mode, pre.mean, pre.std)
        return ModelConfig(spec, cfg, pre, cfg.channels_last and spec.channels_last)
    unknown = set(params) - set(spec.defaults)
    if unknown:
        raise EmodetectError(f"model {model!r} takes no option(s) {sorted(unknown)}; it takes {sorted(spec.defaults)}")
    merged = {**spec.defaults, **params}
    _check_pipeline_params(spec, merged)
    return ModelConfig(spec, merged, spec.preprocess, False)


def _check_pipeline_params(spec: ModelSpec, params: dict) -> None:
    """scikit-learn's own checks of every step's hyperparameters, now rather than after the data is read."""
    try:
        pipe = spec.builder(**params)
        for _, step in pipe.steps:
            if hasattr(step, "_validate_params"):
                step._validate_params()
    except EmodetectError:
        raise
    except Exception as exc:  # scikit-learn's InvalidParameterError and friends: one clear line
        raise EmodetectError(f"model {spec.name!r}: {str(exc).splitlines()[0][:300]}") from None
