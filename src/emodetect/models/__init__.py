"""Models built by name: `create_model("cnn_seed")`, `list_models()`."""

from emodetect.models.registry import create_model, get_spec, list_models

__all__ = ["create_model", "get_spec", "list_models"]
