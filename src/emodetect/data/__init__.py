"""Data layer: read a dataset in the Kaggle class-folder layout, audit it, split it once, cache it."""

from emodetect.data.ingest import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset"]
