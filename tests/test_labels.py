import pytest

from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES, canonical_label, index_to_label, label_to_index


def test_eight_classes_in_fixed_order():
    assert CLASSES == ("anger", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise")


@pytest.mark.parametrize(
    "name, expected",
    [("Angry", "anger"), ("HAPPINESS", "happy"), (" sadness ", "sad"), ("Surprised", "surprise"),
     ("fearful", "fear"), ("disgusted", "disgust"), ("neutral", "neutral"), ("banana", None)],
)  # fmt: skip
def test_aliases_are_case_insensitive(name, expected):
    assert canonical_label(name) == expected


def test_index_round_trip_and_unknown():
    for i, c in enumerate(CLASSES):
        assert label_to_index(c) == i and index_to_label(i) == c
    with pytest.raises(EmodetectError, match="unknown emotion label"):
        label_to_index("banana")
