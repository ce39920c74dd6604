"""The train/val/test split: stratified by class, duplicate groups kept whole, made once with a fixed seed."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def make_split(
    strata: np.ndarray, groups: np.ndarray, fractions=(0.8, 0.1, 0.1), seed: int = 0
) -> np.ndarray:
    """Assign every item to a split (0 = train, 1 = val, 2 = test).

    strata: (N,) class of each item; groups: (N,) group id, -1 for an item with no copies. All members of a
    group land in one split (the stratum of the group is its most common class). Within each stratum, groups
    are visited largest first (random order among equal sizes) and each goes to the split furthest below its
    target, so the result matches the fractions as closely as the group sizes allow.
    """
    strata = np.asarray(strata)
    groups = np.asarray(groups)
    fractions = np.asarray(fractions, float)
    if len(fractions) != len(SPLITS) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    n = len(strata)
    gid = groups.copy()
    singles = gid < 0
    gid[singles] = gid.max(initial=-1) + 1 + np.arange(singles.sum())
    _, gid = np.unique(gid, return_inverse=True)
    n_groups = gid.max() + 1 if n else 0
    members = np.split(np.argsort(gid, kind="stable"), np.cumsum(np.bincount(gid, minlength=n_groups))[:-1])

    rng = np.random.default_rng(seed)
    out = np.empty(n, np.int8)
    group_stratum = np.array([np.bincount(strata[m]).argmax() if len(m) else -1 for m in members])
    for s in np.unique(strata):
        gs = np.nonzero(group_stratum == s)[0]
        sizes = np.array([len(members[g]) for g in gs])
        order = gs[np.lexsort((rng.random(len(gs)), -sizes))]
        target = fractions * sizes.sum()
        filled = np.zeros(len(SPLITS))
        for g in order:
            k = int(np.argmax(target - filled))
            out[members[g]] = k
            filled[k] += len(members[g])
    return out
