"""The one list of emotion names, their aliases, and label <-> index conversion."""

from __future__ import annotations

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


def canonical_label(name: str) -> str | None:
    """The canonical class name for `name` (case-insensitive, aliases resolved), or None if unknown."""
    return ALIASES.get(name.strip().lower())


def label_to_index(name: str) -> int:
    canon = canonical_label(name)
    if canon is None:
        raise EmodetectError(f"unknown emotion label {name!r}; known: {', '.join(CLASSES)}")
    return CLASSES.index(canon)


def index_to_label(index: int) -> str:
    return CLASSES[index]
