import numpy as np
import pytest

from emodetect.data.split import make_split


def test_groups_stay_whole_and_classes_are_stratified():
    rng = np.random.default_rng(0)
    strata = rng.integers(0, 4, 2000)
    groups = np.full(2000, -1)
    groups[:300] = rng.integers(0, 60, 300)  # 60 duplicate groups, some of them across classes
    split = make_split(strata, groups, (0.8, 0.1, 0.1), seed=1)
    for g in np.unique(groups[groups >= 0]):
        assert len(set(split[groups == g])) == 1
    for s in range(4):
        frac = np.bincount(split[strata == s], minlength=3) / (strata == s).sum()
        np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.03)


def test_split_is_deterministic_per_seed():
    strata = np.repeat(np.arange(3), 100)
    groups = np.full(300, -1)
    a = make_split(strata, groups, seed=3)
    assert (a == make_split(strata, groups, seed=3)).all()
    assert (a != make_split(strata, groups, seed=4)).any()


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError):
        make_split(np.zeros(10, int), np.full(10, -1), (0.5, 0.4, 0.4))
