import cv2
import numpy as np

from conftest import synthetic_face
from emodetect.data import dedup
from emodetect.data.dedup import candidate_pairs, find_groups, thumbnails


def _gray_faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return [cv2.cvtColor(synthetic_face(i % 8, rng), cv2.COLOR_RGB2GRAY) for i in range(n)]


def test_exact_and_near_duplicates_are_grouped_distinct_images_are_not():
    gray = _gray_faces(30)
    recrop = cv2.resize(gray[0][3:93, 2:92], (96, 96))  # a 6% re-crop
    gray += [gray[0].copy(), np.clip(recrop * 0.7 + 30, 0, 255).astype(np.uint8)]
    digests = [f"d{i}" for i in range(30)] + ["d0", "other"]
    exact, near = find_groups(np.stack(gray), digests)
    assert exact[0] == exact[30] >= 0 and exact[31] == -1
    assert near[0] == near[30] == near[31] >= 0
    assert (near[1:30] == -1).all()  # same class pattern, different texture: not copies


def _burst(n_faces: int, n_copies: int, seed: int = 1) -> np.ndarray:
    """Video-like bursts: each face shifted by a few pixels and re-lit, n_copies times."""
    rng = np.random.default_rng(seed)
    out = []
    for face in _gray_faces(n_faces, seed):
        for _ in range(n_copies):
            dx, dy = rng.integers(-3, 4, 2)
            m = np.float32([[1, 0, dx], [0, 1, dy]])
            moved = cv2.warpAffine(face, m, (96, 96), borderMode=cv2.BORDER_REFLECT)
            out.append(np.clip(moved * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255).astype(np.uint8))
    return np.stack(out)


def test_a_dense_burst_of_copies_ends_up_one_group_per_face_with_few_verifications():
    stack = _burst(6, 40)
    stats = {}
    _, near = find_groups(stack, [str(i) for i in range(len(stack))], stats=stats)
    groups = near.reshape(6, 40)
    assert (groups >= 0).all() and all(len(set(g)) == 1 for g in groups) and len(set(groups[:, 0])) == 6
    # one link per copy is enough: pairs already joined are never verified (a few more happen in parallel)
    assert 6 * 39 <= stats["n_linked"] <= 1.2 * 6 * 39 and stats["n_verified"] < stats["n_candidates"] / 3


def test_skipping_joined_pairs_gives_the_groups_of_verifying_every_pair():
    stack = np.concatenate([_burst(3, 12), np.stack(_gray_faces(20, seed=7))])
    digests = [str(i) for i in range(len(stack))]
    pairs, _ = candidate_pairs(thumbnails(stack))
    v = dedup._Verifier(stack)
    ok = np.array([v.score(p) > dedup.VERIFY_NCC for p in pairs], bool)
    brute = dedup._component_ids(len(stack), pairs[ok, 0], pairs[ok, 1])
    _, near = find_groups(stack, digests)
    np.testing.assert_array_equal(near, brute)


def test_candidates_are_the_all_pairs_ones_capped_at_k_per_image():
    th = thumbnails(_burst(4, 30, seed=3))  # 120 images: a single leaf, so the search is exact
    sim = th @ th.T
    i, j = np.nonzero(np.triu(sim > dedup.CANDIDATE_COSINE, 1))
    pairs, cos = candidate_pairs(th, k=1000)
    assert {(a, b) for a, b in pairs} == set(zip(i.tolist(), j.tolist()))
    assert (np.diff(cos) <= 0).all()  # most similar first
    capped, _ = candidate_pairs(th, k=5)
    per_image = np.bincount(capped.ravel(), minlength=len(th))
    assert len(capped) < len(pairs) and per_image.min() >= 5  # each image keeps its 5 best (others may add more)
    kept = {tuple(p) for p in capped}
    for img in range(len(th)):  # every image's 5 most similar partners survive the cap
        mine = [(c, tuple(p)) for p, c in zip(pairs, cos) if img in p]
        assert all(p in kept for _, p in sorted(mine, reverse=True)[:5])


def test_the_forest_finds_planted_copies_among_many_images():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(3000, 12, 12)).astype(np.float32)
    stack = np.stack([np.clip(110 + 25 * cv2.resize(z, (96, 96), interpolation=cv2.INTER_CUBIC), 0, 255)
                      for z in noise]).astype(np.uint8)  # fmt: skip
    src = rng.choice(3000, 40, replace=False)
    copies = np.stack([cv2.resize(stack[s][4:92, 3:93], (96, 96)) for s in src])  # re-cropped copies
    th = thumbnails(np.concatenate([stack, copies]))
    pairs, _ = candidate_pairs(th)
    found = {tuple(p) for p in pairs}
    above = np.einsum("ij,ij->i", th[src], th[3000:]) > dedup.CANDIDATE_COSINE  # what an all-pairs search finds
    assert above.sum() >= 30
    assert all((int(s), 3000 + k) in found for k, s in enumerate(src) if above[k])
