"""Exact and near-duplicate groups, so that no copy of a face can sit on both sides of a split.

Near-duplicates in AffectNet are the same photo re-cropped, re-scaled or re-coloured. Two stages:
1. candidates: cosine similarity of mean-centred 16x16 grayscale thumbnails above ``CANDIDATE_COSINE``
   (cheap, blocked matrix products over all pairs);
2. verification: the best normalised cross-correlation of one image's central 64x64 patch against the
   other image at several scales, after histogram equalisation (robust to re-colouring and re-cropping),
   above ``VERIFY_NCC``. Aligned faces of different people pass stage 1 but fail stage 2.
Groups are the connected components of verified pairs plus byte-identical files.
The thresholds were set by looking at pairs in each score band on the AffectNet zip.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CANDIDATE_COSINE = 0.85
VERIFY_NCC = 0.90
_THUMB = 16
_SCALES = (1.0, 0.92, 1.08, 0.85, 1.17, 1.27)


def thumbnails(gray: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, 256) float32 unit vectors of mean-centred 16x16 thumbnails."""
    th = np.stack([cv2.resize(g, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA) for g in gray])
    th = th.reshape(len(gray), -1).astype(np.float32)
    th -= th.mean(axis=1, keepdims=True)
    th /= np.linalg.norm(th, axis=1, keepdims=True) + 1e-6
    return th


def candidate_pairs(thumbs: np.ndarray, threshold: float = CANDIDATE_COSINE, block: int = 2048) -> np.ndarray:
    """All pairs (i < j) with thumbnail cosine similarity above threshold, as an (M, 2) int array."""
    out = []
    for start in range(0, len(thumbs), block):
        sim = thumbs[start : start + block] @ thumbs[start:].T  # (b, N - start): only j >= start
        ii, jj = np.nonzero(sim > threshold)
        jj += start
        ii += start
        keep = ii < jj
        out.append(np.stack([ii[keep], jj[keep]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), int)


class _Verifier:
    def __init__(self, gray: np.ndarray, used: np.ndarray):
        size = gray.shape[1]
        self.margin = size // 6
        self.eq = {int(i): cv2.equalizeHist(gray[i]) for i in used}
        self.scaled = {
            i: [
                cv2.resize(e, (round(size * s),) * 2, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
                for s in _SCALES
            ]
            for i, e in self.eq.items()
        }

    def score(self, pair) -> float:
        i, j = int(pair[0]), int(pair[1])
        m, best = self.margin, -1.0
        for a, b in ((i, j), (j, i)):
            patch = self.eq[a][m:-m, m:-m]
            for img in self.scaled[b]:
                best = max(best, float(cv2.matchTemplate(img, patch, cv2.TM_CCOEFF_NORMED).max()))
                if best > VERIFY_NCC:
                    return best
        return best


def find_groups(gray: np.ndarray, digests: list[str], n_threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate groups of a stack of grayscale images.

    Returns ``(exact, near)``: two (N,) int arrays; images sharing a non-negative id are byte-identical
    (``exact``) or the same photo (``near``, which includes the exact groups); -1 marks an image with no copy.
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

    pairs = candidate_pairs(thumbnails(gray))
    ea, eb = exact[pairs[:, 0]], exact[pairs[:, 1]]
    pairs = pairs[(ea < 0) | (ea != eb)]  # byte-identical copies need no check
    if len(pairs):
        verifier = _Verifier(gray, np.unique(pairs))
        with ThreadPoolExecutor(n_threads) as pool:  # OpenCV releases the GIL
            scores = np.fromiter(pool.map(verifier.score, pairs, chunksize=256), float, len(pairs))
        pairs = pairs[scores > VERIFY_NCC]
    near = _component_ids(
        n, np.concatenate([np.array(rows, int), pairs[:, 0]]), np.concatenate([np.array(cols, int), pairs[:, 1]])
    )
    return exact, near


def _component_ids(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph; singletons get -1, groups get ids 0, 1, ... in order of first member."""
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    ids = np.full(n, -1, int)
    mapping: dict[int, int] = {}
    for i, c in enumerate(comp):
        if sizes[c] > 1:
            ids[i] = mapping.setdefault(int(c), len(mapping))
    return ids
