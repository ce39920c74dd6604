"""One registry for every model in the project, classical pipelines and networks alike.

A spec says how to build the model and what it eats (its `Preprocess`), so training, evaluation, export and
the shipped artifact never guess. Modules register themselves on import; `_load_all` imports them lazily
so that `import emodetect` stays fast and quiet.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from emodetect.data.transforms import Preprocess
from emodetect.errors import EmodetectError

_MODULES = ("emodetect.models.classical", "emodetect.models.cnn", "emodetect.models.efficientnet_lite",
            "emodetect.models.mini_xception")  # fmt: skip


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


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, kind: str = "torch", preprocess: Preprocess = Preprocess(), description: str = "",
                   pretrained: str | None = None, defaults: dict | None = None, channels_last: bool = True):  # fmt: skip
    def wrap(builder):
        _REGISTRY[name] = ModelSpec(name, kind, builder, preprocess, description, pretrained, dict(defaults or {}),
                                    channels_last)  # fmt: skip
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
