"""The one list of emotion names, their aliases, and label <-> index conversion."""

from __future__ import annotations

import numpy as np

from emodetect.errors import EmodetectError

#: The eight AffectNet expression classes, in the order every model in the project uses.
CLASSES: tuple[str, ...] = (
    "anger",
    "contempt",
    "disgust",
    "fear",
    "happy",
    "neutral",
    "sad",
    "surprise",
)

#: Other spellings used by FER datasets in the same folder layout (FER2013, RAF-DB, CK+, ...).
ALIASES: dict[str, str] = {
    "angry": "anger",
    "anger": "anger",
    "contempt": "contempt",
    "contemptuous": "contempt",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
}


#: class name -> index into CLASSES
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}


def canonical_label(name: str) -> str | None:
    """The canonical class name for `name` (case-insensitive, aliases resolved), or None if unknown."""
    return ALIASES.get(name.strip().lower())


def label_to_index(name: str) -> int:
    """The index in CLASSES of an emotion name or alias (case-insensitive)."""
    canon = canonical_label(name)
    if canon is None:
        raise EmodetectError(f"unknown emotion label {name!r}; known: {', '.join(CLASSES)}")
    return CLASS_INDEX[canon]


def labels_to_indices(names, missing: str = "") -> np.ndarray:
    """Canonical class names -> int64 indices into CLASSES; `missing` (no label) -> -1."""
    lookup = {**CLASS_INDEX, missing: -1}
    return np.array([lookup[n] for n in names], np.int64)


def index_to_label(index: int) -> str:
    return CLASSES[index]
