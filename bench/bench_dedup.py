"""Near-duplicate search: time against the number of images, and a dense burst of video-like copies.

    python bench/bench_dedup.py [--sizes 20000,50000,100000]

Synthetic stacks of smooth random 96x96 textures, with planted byte-identical copies and near-duplicates
(re-cropped by a few pixels and re-lit); every planted copy must end up in its original's group. The
dense case: 20 faces x 50 slightly shifted and re-lit copies (1,000 images, like frames of a video or a
posed sequence) must give one group per face. Prints a table and the growth exponent of time in N.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from emodetect.data.dedup import find_groups


def textures(n: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(size=(n, 12, 12)).astype(np.float32)
    out = np.empty((n, 96, 96), np.uint8)
    for i, z in enumerate(noise):
        out[i] = np.clip(110 + 30 * cv2.resize(z, (96, 96), interpolation=cv2.INTER_CUBIC), 0, 255)
    return out


def near_copy(img: np.ndarray, rng: np.random.Generator, max_shift: int = 3) -> np.ndarray:
    dx, dy = rng.integers(-max_shift, max_shift + 1, 2)
    moved = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (96, 96), borderMode=cv2.BORDER_REFLECT)
    return np.clip(moved * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15), 0, 255).astype(np.uint8)


def planted_stack(n: int, seed: int = 0):
    """n images: 98% distinct, 1% byte copies and 1% near copies of distinct ones; returns the pairs to find."""
    rng = np.random.default_rng(seed)
    n_plant = n // 100
    base = textures(n - 2 * n_plant, rng)
    src = rng.choice(len(base), 2 * n_plant, replace=False)
    exact = base[src[:n_plant]]
    near = np.stack([near_copy(base[s], rng) for s in src[n_plant:]])
    stack = np.concatenate([base, exact, near])
    digests = [f"img{i}" for i in range(len(base))] + [f"img{s}" for s in src[:n_plant]] + \
              [f"near{i}" for i in range(n_plant)]  # fmt: skip
    pairs = [(int(s), len(base) + k) for k, s in enumerate(src)]
    return stack, digests, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,50000,100000")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} torch threads, cv2 threads {cv2.getNumThreads()}")
    rows = []
    for n in map(int, args.sizes.split(",")):
        stack, digests, pairs = planted_stack(n)
        stats = {}
        t = time.perf_counter()
        _, near = find_groups(stack, digests, stats=stats)
        seconds = time.perf_counter() - t
        found = sum(near[a] >= 0 and near[a] == near[b] for a, b in pairs)
        rows.append((n, seconds, found, len(pairs), stats))
        print(f"  {n:,} images: {seconds:.1f} s", flush=True)
    print("\n| images | seconds | planted copies found | candidate pairs | verified | linked |")
    print("|---|---|---|---|---|---|")
    for n, s, found, total, st in rows:
        print(f"| {n:,} | {s:.1f} | {found}/{total} | {st['n_candidates']:,} | {st['n_verified']:,} | {st['n_linked']:,} |")
    if len(rows) > 1:
        slope = np.polyfit(np.log([r[0] for r in rows]), np.log([r[1] for r in rows]), 1)[0]
        print(f"\ngrowth: time ~ N^{slope:.2f} (1 = linear, 2 = all pairs)")

    rng = np.random.default_rng(1)
    faces = textures(20, rng)
    burst = np.stack([near_copy(f, rng) for f in faces for _ in range(50)])
    stats = {}
    t = time.perf_counter()
    _, near = find_groups(burst, [str(i) for i in range(len(burst))], stats=stats)
    seconds = time.perf_counter() - t
    groups = near.reshape(20, 50)
    one_each = all(len(set(g)) == 1 and g[0] >= 0 for g in groups) and len(set(groups[:, 0])) == 20
    print(f"\ndense case, 20 faces x 50 shifted/re-lit copies: {seconds:.2f} s (target <= 5 s); one group per face: "
          f"{one_each}; {stats['n_candidates']:,} candidates, {stats['n_verified']:,} verified, {stats['n_linked']:,} linked")


if __name__ == "__main__":
    main()
