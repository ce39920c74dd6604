"""emodetect: facial emotion recognition, from a reproducible study to a model you can ship."""

__version__ = "0.1.0"
