import numpy as np
import pytest
from sklearn import metrics as skm

from emodetect.evaluation.calibration import fit_temperature, nll, reliability
from emodetect.evaluation.metrics import accuracy_by_within_class, classification_metrics, most_confused_pairs


def test_metrics_equal_sklearn_on_a_hand_made_case():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 4])
    y_pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 4])
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred)) == 0.7
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    # hand-computed: class 0 has tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3
    assert m["per_class"]["anger"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                       "f1": pytest.approx(2 / 3), "support": 3}  # fmt: skip
    assert set(m["per_class"]) == {"anger", "contempt", "disgust", "happy"}  # absent classes are absent
    assert m["classes"] == ["anger", "contempt", "disgust", "happy"]
    np.testing.assert_array_equal(m["confusion_matrix"], skm.confusion_matrix(y_true, y_pred))
    assert m["n_images"] == 10


def test_predicted_but_absent_class_shows_in_confusion_not_in_macro():
    y_true = np.array([4, 4, 5, 5])
    y_pred = np.array([4, 1, 5, 5])  # contempt predicted, but no true contempt
    m = classification_metrics(y_true, y_pred)
    assert m["classes"] == ["contempt", "happy", "neutral"]
    assert list(m["per_class"]) == ["happy", "neutral"]
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=[4, 5], average="macro"))
    assert np.array(m["confusion_matrix"]).sum() == 4


def test_accuracy_by_format_within_class_lists_only_classes_seen_in_two_formats():
    # anger (0): 3 png (2 right), 4 jpeg (1 right); contempt (1): jpeg only; disgust (2): 3 png, 1 jpeg
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    keys = np.array(["png"] * 3 + ["jpeg"] * 4 + ["jpeg"] * 3 + ["png"] * 3 + ["jpeg"])
    correct = np.array([1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1], bool)
    out = accuracy_by_within_class(correct, labels, keys, min_n=3)
    assert out == {"anger": {"jpeg": {"accuracy": 0.25, "n": 4}, "png": {"accuracy": 2 / 3, "n": 3}}}
    both = accuracy_by_within_class(correct, labels, keys, min_n=1)  # disgust's one jpeg image now counts
    assert set(both) == {"anger", "disgust"} and both["disgust"]["jpeg"] == {"accuracy": 1.0, "n": 1}


def test_most_confused_pairs():
    cm = np.array([[5, 3, 0], [1, 5, 7], [0, 0, 9]])
    assert most_confused_pairs(cm, ["a", "b", "c"], k=2) == [("b", "c", 7), ("a", "b", 3)]


def test_temperature_fixes_overconfidence_and_ece_is_computed_right():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 4000)
    logits = rng.normal(0, 1, (4000, 4))
    logits[np.arange(4000), y] += 1.0
    hot = logits * 4  # the same ranking, far too confident
    t = fit_temperature(hot, y)
    assert 3 < t < 5
    assert nll(hot, y, t) < nll(hot, y)
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    r = reliability(proba, np.array([0, 1, 0, 0]), n_bins=10)
    # bin 0.9: accuracy 0.5 vs confidence 0.9; bin 0.6: accuracy 1.0 vs 0.6 -> ECE = (2*0.4 + 2*0.4) / 4
    assert r["ece"] == pytest.approx(0.4)
    occupied = [(round(c, 6), n) for c, n in zip(r["confidence"], r["count"]) if n]
    assert occupied == [(0.6, 2), (0.9, 2)]
