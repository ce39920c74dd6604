"""Data layer: read a dataset in the Kaggle class-folder layout, audit it, split it once, cache it."""

from emodetect.data.dataset import Dataset, DataSource
from emodetect.data.ingest import load_dataset, load_datasets

__all__ = ["DataSource", "Dataset", "load_dataset", "load_datasets"]
