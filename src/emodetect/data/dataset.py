"""`Dataset`: decoded images with labels, the stored split and the manifest; several can be combined.

A combined dataset keeps each source's own stored split, and its ``source`` column names where each row
came from, so that training can weigh sources and every number can be reported per source.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from emodetect.data.split import SPLITS
from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES


@dataclass
class Dataset:
    """Decoded images with labels and the stored split. Rows follow the manifest order."""

    images: np.ndarray  # (N, S, S) gray or (N, S, S, 3) rgb, uint8
    labels: np.ndarray  # (N,) int64 index into CLASSES
    split: np.ndarray  # (N,) int8 index into SPLITS; -1 where no split was made (evaluation only)
    manifest: dict[str, np.ndarray]  # per-row columns: MANIFEST_COLUMNS plus "source"
    info: dict = field(default_factory=dict)
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def paths(self) -> np.ndarray:
        return self.manifest["path"]

    @property
    def sources(self) -> np.ndarray:
        """(N,) the name of the dataset each row comes from."""
        return self.manifest["source"]

    def subset(self, which: str | np.ndarray) -> Dataset:
        """Rows of one split (``"train"``, ``"val"``, ``"test"``) or of a boolean/index array."""
        if isinstance(which, str):
            if which not in SPLITS:
                raise ValueError(f"unknown split {which!r}; expected one of {SPLITS}")
            which = self.split == SPLITS.index(which)
        return replace(
            self,
            images=self.images[which],
            labels=self.labels[which],
            split=self.split[which],
            manifest={k: v[which] for k, v in self.manifest.items()},
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))



@dataclass(frozen=True)
class DataSource:
    """One dataset given on the command line: ``PATH`` or ``NAME=PATH``."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str | Path) -> DataSource:
        text = str(text)
        name, sep, path = text.partition("=")
        if sep and name and "/" not in name and not Path(text).exists():
            return cls(name.strip(), Path(path))
        return cls(dataset_name(text), Path(text))


def dataset_name(path: str | Path) -> str:
    """A short name for a dataset file or folder: its name without the archive extension."""
    p = Path(path)
    return p.stem if p.suffix.lower() == ".zip" else p.name


def parse_sources(items) -> list[DataSource]:
    """One dataset or a list of them, each a path, ``NAME=PATH`` or a DataSource; names must differ."""
    if isinstance(items, (str, os.PathLike, DataSource)):
        items = [items]
    sources = [s if isinstance(s, DataSource) else DataSource.parse(s) for s in items]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise EmodetectError(f"two datasets share a name ({', '.join(names)}); name them: --data NAME=PATH")
    if not sources:
        raise EmodetectError("no dataset given")
    return sources


def concat(datasets: list[Dataset]) -> Dataset:
    """One dataset from several (same image size and colour mode); rows keep their source and stored split."""
    if len(datasets) == 1:
        return datasets[0]
    shapes = {d.images.shape[1:] for d in datasets}
    if len(shapes) != 1:
        raise EmodetectError(f"datasets of different image shapes cannot be combined: {sorted(shapes)}")
    columns = set.intersection(*(set(d.manifest) for d in datasets))
    manifest = {c: np.concatenate([d.manifest[c] for d in datasets]) for c in sorted(columns)}
    infos = {d.info["name"]: d.info for d in datasets}
    key = hashlib.sha256("\n".join(f"{n}\t{i['fingerprint']}" for n, i in infos.items()).encode()).hexdigest()
    first = datasets[0].info
    info = {
        "name": "+".join(infos),
        "sources": infos,
        "source": " + ".join(i["source"] for i in infos.values()),
        "fingerprint": key,
        "dataset_id": " + ".join(f"{n}:{i['dataset_id']}" for n, i in infos.items()),
        "split_id": " + ".join(f"{n}:{i['split_id']}" for n, i in infos.items()),
        "label_source": first["label_source"],
        "mode": first["mode"],
        "size": first["size"],
        "warnings": [f"{n}: {w}" for n, i in infos.items() for w in i.get("warnings", [])],
        "unreadable": [f"{n}/{p}" for n, i in infos.items() for p in i["unreadable"]],
    }
    return Dataset(images=np.concatenate([d.images for d in datasets]), labels=np.concatenate([d.labels for d in datasets]),
                   split=np.concatenate([d.split for d in datasets]), manifest=manifest, info=info)  # fmt: skip
