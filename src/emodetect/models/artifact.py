"""Self-describing, safely loadable model files.

- networks: one ``.safetensors`` file; the header's metadata holds the JSON description (model name and
  arguments, classes, preprocessing, label source, config, metrics, library versions, temperature);
- scikit-learn pipelines: one ``.skops`` file holding ``{"pipeline": ..., "meta": ...}``, loaded with an
  explicit allow-list of types (never plain unpickling).
Loading needs nothing but the file.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emodetect import __version__
from emodetect.data.transforms import Preprocess
from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES

FORMAT_VERSION = 1


def library_versions() -> dict:
    import sklearn

    versions = {"emodetect": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "scikit-learn": sklearn.__version__}  # fmt: skip
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return versions


@dataclass
class Artifact:
    """A loaded model and its description. `model` is an nn.Module (eval mode) or a fitted Pipeline."""

    model: object
    meta: dict
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def name(self) -> str:
        return self.meta["model"]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.meta["preprocess"])

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))


def _describe(kind: str, name: str, preprocess: Preprocess, meta: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": name,
        "classes": list(CLASSES),
        "preprocess": preprocess.to_dict(),
        "versions": library_versions(),
        **meta,
    }


def save_network(path: str | Path, model, name: str, preprocess: Preprocess, meta: dict,
                 model_kwargs: dict | None = None, half: bool = False) -> Path:  # fmt: skip
    """Write a network's weights and description; ``half`` stores float16 weights (loads back as float32)."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    description = _describe("torch", name, preprocess, {"model_kwargs": model_kwargs or {}, "dtype":
                            "float16" if half else "float32", **meta})  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.to(torch.float32) if v.dtype == torch.bfloat16 else v for k, v in state.items()}, str(tmp),
              metadata={"emodetect": json.dumps(description)})  # fmt: skip
    tmp.replace(path)
    return path


_SKOPS_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "emodetect.", "collections.")


def save_pipeline(path: str | Path, pipeline, name: str, preprocess: Preprocess, meta: dict) -> Path:
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sio.dump({"pipeline": pipeline, "meta": json.dumps(_describe("sklearn", name, preprocess, meta))}, tmp)
    tmp.replace(path)
    return path


def load_artifact(path: str | Path) -> Artifact:
    """Load a ``.safetensors`` network or a ``.skops`` pipeline written by this package."""
    path = Path(path)
    if not path.is_file():
        raise EmodetectError(f"model file not found: {path}")
    if path.suffix == ".skops":
        return _load_pipeline(path)
    if path.suffix == ".safetensors":
        return _load_network(path)
    raise EmodetectError(f"{path}: unknown model file type (expected .safetensors or .skops)")


def _load_network(path: Path) -> Artifact:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from emodetect.models.registry import create_model

    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["emodetect"])
        state = load_file(str(path))
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise EmodetectError(f"{path} is not a valid emodetect model file ({type(exc).__name__}: {exc})") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise EmodetectError(f"{path} was written by a newer emodetect (format {meta['format_version']})")
    model = create_model(meta["model"], num_classes=len(meta["classes"]), pretrained=False, **meta["model_kwargs"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise EmodetectError(f"{path}: weights do not fit model {meta['model']!r}: {exc}") from None
    missing = set(model.state_dict()) - set(state)
    if any(not k.endswith("num_batches_tracked") for k in missing):
        raise EmodetectError(f"{path}: weights missing for {sorted(missing)[:5]}")
    model.eval()
    return Artifact(model, meta, path)


def _load_pipeline(path: Path) -> Artifact:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
        bad = [t for t in untrusted if not t.startswith(_SKOPS_TRUSTED_PREFIXES)]
        if bad:
            raise EmodetectError(f"{path} contains types that are not allowed: {bad}")
        obj = sio.load(path, trusted=untrusted)
        meta = json.loads(obj["meta"])
        return Artifact(obj["pipeline"], meta, path)
    except EmodetectError:
        raise
    except Exception as exc:  # skops raises many types on a corrupt file; all mean the same to a user
        raise EmodetectError(f"{path} is not a valid emodetect model file ({type(exc).__name__}: {exc})") from None
