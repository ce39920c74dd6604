import cv2
import numpy as np

from conftest import synthetic_face
from emodetect.data.dedup import find_groups


def test_exact_and_near_duplicates_are_grouped_distinct_images_are_not():
    rng = np.random.default_rng(0)
    rgb = [synthetic_face(i % 8, rng) for i in range(30)]
    gray = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in rgb]
    recrop = cv2.resize(gray[0][3:93, 2:92], (96, 96))  # a 6% re-crop
    gray += [gray[0].copy(), np.clip(recrop * 0.7 + 30, 0, 255).astype(np.uint8)]
    digests = [f"d{i}" for i in range(30)] + ["d0", "other"]
    exact, near = find_groups(np.stack(gray), digests)
    assert exact[0] == exact[30] >= 0 and exact[31] == -1
    assert near[0] == near[30] == near[31] >= 0
    assert (near[1:30] == -1).all()  # same class pattern, different texture: not copies
