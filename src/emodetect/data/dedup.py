"""Exact and near-duplicate groups, so that no copy of a face can sit on both sides of a split.

Near-duplicates in AffectNet are the same photo re-cropped, re-scaled or re-coloured. Two stages:
1. candidates: pairs whose mean-centred 16x16 grayscale thumbnails have cosine similarity above
   ``CANDIDATE_COSINE``. They are found with a random-projection forest (Annoy-style median splits with a
   small spill, so that close pairs near a split stay together; exact cosines inside each leaf): linear in
   the number of images, where all pairs would be quadratic. Each image keeps at most ``MAX_CANDIDATES``
   of its most similar thumbnails.
2. verification: the best normalised cross-correlation of one image's central 64x64 patch against the
   other image at several scales, after histogram equalisation (robust to re-colouring and re-cropping),
   above ``VERIFY_NCC``. Aligned faces of different people pass stage 1 but fail stage 2. Pairs are
   verified most-similar first, and a pair whose images are already in one group is not verified at all:
   the groups are the same as if every pair were checked, and a burst of video frames costs one
   verification per frame, not one per pair.
Groups are the connected components of verified pairs plus byte-identical files.
The thresholds were set by looking at pairs in each score band on the AffectNet zip; on that zip the forest
finds every verified pair that an all-pairs search finds (tests/test_real_data.py checks the groups).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CANDIDATE_COSINE = 0.85
VERIFY_NCC = 0.90
MAX_CANDIDATES = 32  # per image; with 16 or fewer, AffectNet's groups change (some links are lost)
N_TREES = 12
LEAF_SIZE = 256
SPILL = 0.05  # points this close to a split (as a quantile on each side) go down both branches
_THUMB = 16
_SCALES = (1.0, 0.92, 1.08, 0.85, 1.17, 1.27)


def thumbnails(gray: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, 256) float32 unit vectors of mean-centred 16x16 thumbnails."""
    th = np.stack([cv2.resize(g, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA) for g in gray])
    th = th.reshape(len(gray), -1).astype(np.float32)
    th -= th.mean(axis=1, keepdims=True)
    th /= np.linalg.norm(th, axis=1, keepdims=True) + 1e-6
    return th


def _forest_leaves(x: np.ndarray, rng: np.random.Generator, leaf_size: int, spill: float) -> list[np.ndarray]:
    """The leaves of one random-projection tree: index arrays of at most ~leaf_size similar rows."""
    out, stack = [], [np.arange(len(x))]
    while stack:
        idx = stack.pop()
        if len(idx) <= leaf_size:
            out.append(idx)
            continue
        p, q = rng.choice(idx, 2, replace=False)
        normal = x[p] - x[q]  # a split between two random points adapts to the data (Annoy)
        if not normal.any():
            normal = rng.normal(size=x.shape[1]).astype(x.dtype)
        proj = x[idx] @ normal
        lo, hi = np.quantile(proj, [0.5 - spill, 0.5 + spill])
        left, right = idx[proj <= hi], idx[proj > lo]
        if len(left) == len(idx) or len(right) == len(idx):  # ties: cannot split; keep leaves bounded anyway
            out += [idx[k : k + leaf_size] for k in range(0, len(idx), leaf_size)]
            continue
        stack += [left, right]
    return out


def candidate_pairs(thumbs: np.ndarray, threshold: float = CANDIDATE_COSINE, k: int = MAX_CANDIDATES,
                    n_trees: int = N_TREES, leaf_size: int = LEAF_SIZE, spill: float = SPILL,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Pairs (i < j) with thumbnail cosine above threshold, at most k per image (its most similar), sorted by
    cosine, most similar first. Returns (pairs (M, 2) int64, cosines (M,) float32)."""
    n = len(thumbs)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    # images with the very same thumbnail: one stands for all in the search, the others pair with it alone
    # (thousands of copies would otherwise fill one leaf and cost thousands squared)
    _, rep_of_unique, inverse = np.unique(thumbs, axis=0, return_index=True, return_inverse=True)
    reps = np.sort(rep_of_unique)
    star = np.nonzero(rep_of_unique[inverse.ravel()] != np.arange(n))[0]
    found = [np.stack([rep_of_unique[inverse.ravel()[star]], star], 1)]
    sims = [np.ones(len(star), np.float32)]
    rng = np.random.default_rng(seed)
    x = thumbs[reps]
    for _ in range(1 if len(reps) <= leaf_size else n_trees):  # one leaf holding everything is already exact
        for idx in _forest_leaves(x, rng, leaf_size, spill):
            sim = x[idx] @ x[idx].T  # (m, m)
            i, j = np.nonzero(np.triu(sim > threshold, 1))  # idx is sorted, so reps[idx[i]] < reps[idx[j]]
            found.append(np.stack([reps[idx[i]], reps[idx[j]]], 1))
            sims.append(sim[i, j])
    pairs = np.sort(np.concatenate(found).astype(np.int64), axis=1)
    if not len(pairs):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    pairs, first = np.unique(pairs, axis=0, return_index=True)  # the same pair from several trees: once
    return _keep_top_k(pairs, np.concatenate(sims)[first], n, k)


def _keep_top_k(pairs: np.ndarray, cos: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep a pair when it is among the k most similar of either of its images; sort by cosine, descending."""
    order = np.argsort(-cos, kind="stable")
    pairs, cos = pairs[order], cos[order]
    ends = pairs.ravel()  # (2M,): both images of every pair, in order of similarity
    # the rank of each occurrence among its image's pairs (0 = most similar): group by image, stably
    sorter = np.argsort(ends, kind="stable")
    counts = np.bincount(ends, minlength=n)
    rank = np.empty(len(ends), np.int64)
    rank[sorter] = np.arange(len(ends)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = (rank.reshape(-1, 2) < k).any(axis=1)
    return pairs[keep], cos[keep]


class _Verifier:
    def __init__(self, gray: np.ndarray):
        self.gray = gray
        self.margin = gray.shape[1] // 6
        self._scaled = lru_cache(maxsize=8192)(self._scaled_uncached)

    def _scaled_uncached(self, i: int) -> tuple[np.ndarray, list[np.ndarray]]:
        eq = cv2.equalizeHist(self.gray[i])
        size = eq.shape[0]
        return eq, [cv2.resize(eq, (round(size * s),) * 2, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
                    for s in _SCALES]  # fmt: skip

    def score(self, pair) -> float:
        """The best NCC of either image's central patch inside the other at any scale (stops above the bar)."""
        i, j = int(pair[0]), int(pair[1])
        m, best = self.margin, -1.0
        for a, b in ((i, j), (j, i)):
            patch = self._scaled(a)[0][m:-m, m:-m]
            for img in self._scaled(b)[1]:
                best = max(best, float(cv2.matchTemplate(img, patch, cv2.TM_CCOEFF_NORMED).max()))
                if best > VERIFY_NCC:
                    return best
        return best


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def find_groups(gray: np.ndarray, digests: list[str], n_threads: int = 2,
                stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Duplicate groups of a stack of grayscale images.

    Returns ``(exact, near)``: two (N,) int arrays; images sharing a non-negative id are byte-identical
    (``exact``) or the same photo (``near``, which includes the exact groups); -1 marks an image with no copy.
    ``stats``, if given, receives the number of candidate pairs and of verifications.
    """
    n = len(gray)
    rows, cols = [], []
    first: dict[str, int] = {}
    for i, d in enumerate(digests):
        if d in first:
            rows.append(first[d])
            cols.append(i)
        else:
            first[d] = i
    exact = _component_ids(n, np.array(rows, int), np.array(cols, int))

    pairs, _ = candidate_pairs(thumbnails(gray))
    uf = _UnionFind(n)
    for a, b in zip(rows, cols):
        uf.union(a, b)
    verifier = _Verifier(gray)
    verified, n_checked = [], 0
    chunk = 4 * n_threads  # small: pairs in one chunk are checked against the groups as they were before it
    with ThreadPoolExecutor(n_threads) as pool:  # OpenCV releases the GIL
        for start in range(0, len(pairs), chunk):
            todo = [p for p in pairs[start : start + chunk] if uf.find(p[0]) != uf.find(p[1])]
            n_checked += len(todo)
            for p, s in zip(todo, pool.map(verifier.score, todo)):
                if s > VERIFY_NCC:
                    uf.union(p[0], p[1])
                    verified.append(p)
    if stats is not None:
        stats.update(n_candidates=len(pairs), n_verified=n_checked, n_linked=len(verified))
    v = np.array(verified, int).reshape(-1, 2)
    near = _component_ids(n, np.concatenate([np.array(rows, int), v[:, 0]]), np.concatenate([np.array(cols, int), v[:, 1]]))
    return exact, near


def _component_ids(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph; singletons get -1, groups get ids 0, 1, ... in order of first member."""
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    ids = np.full(n, -1, int)
    big = sizes[comp] > 1
    order = {c: k for k, c in enumerate(dict.fromkeys(comp[big].tolist()))}  # by first member
    ids[big] = [order[c] for c in comp[big].tolist()]
    return ids
