"""Face crops: the alignment that maps a detected face onto the training crops' framing."""

import cv2
import numpy as np
import pytest

from emodetect.inference.crop import CROP_SIZE, TEMPLATE, alignment_matrix, crop_face
from emodetect.inference.faces import Detection


def _rotate(points, angle_deg, centre):
    a = np.radians(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - centre) @ r.T + centre


@pytest.mark.parametrize("scale, angle, shift", [(1.0, 0, (0, 0)), (3.0, 0, (200, 50)), (0.6, 20, (10, 300)),
                                                  (5.0, -35, (400, 120))])  # fmt: skip
def test_a_face_anywhere_any_size_and_tilted_maps_onto_the_template(scale, angle, shift):
    pts = _rotate(TEMPLATE * scale, angle, TEMPLATE.mean(0) * scale) + np.float32(shift)
    m = alignment_matrix(Detection((0, 0, 1, 1), 1.0, pts.astype(np.float32)))
    mapped = np.c_[pts, np.ones(5)] @ m.T
    np.testing.assert_allclose(mapped, TEMPLATE, atol=0.05)  # levelled, scaled and shifted exactly
    eyes = mapped[1] - mapped[0]
    assert abs(np.degrees(np.arctan2(eyes[1], eyes[0])) - np.degrees(np.arctan2(*(TEMPLATE[1] - TEMPLATE[0])[::-1]))) < 0.1


def test_the_crop_of_a_template_face_is_the_face_itself():
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    big = np.zeros((400, 500, 3), np.uint8)
    big[100:196, 200:296] = face
    crop = crop_face(big, Detection((0, 0, 1, 1), 1.0, TEMPLATE + np.float32([200, 100])))
    np.testing.assert_array_equal(crop, face)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8


def test_a_big_face_is_shrunk_without_aliasing_and_boxes_work_without_landmarks():
    stripes = np.zeros((960, 960, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: point sampling at 1/10 would alias into solid bars
    crop = crop_face(stripes, Detection((0, 0, 1, 1), 1.0, TEMPLATE * 10))
    inner = crop[10:-10, 10:-10]  # aliasing would give solid black and white bars: a large spread
    assert 90 < float(inner.mean()) < 165 and inner.std() < 20
    box_crop = crop_face(stripes, Detection((100, 100, 604, 808), 1.0, None))
    assert box_crop.shape == (CROP_SIZE, CROP_SIZE, 3)


def test_shrinking_a_big_face_first_does_not_shift_the_crop():
    """The low-pass path (resize, then warp) frames the face where a direct warp does. On a linear ramp, where
    both are exact (float pixels, so no rounding steps), the crops agree; a corner-for-centre mix-up in the
    resize's coordinates shifted the crop by up to half a small pixel (0.3 levels of this ramp)."""
    yy, xx = np.mgrid[0:1000, 0:1000].astype(np.float32)
    ramp = np.dstack([(xx - 50) * 0.25, (yy - 50) * 0.25, np.zeros_like(xx)])
    detection = Detection((0, 0, 1, 1), 1.0, TEMPLATE * 8 + np.float32([100, 100]))  # scale 1/8: the low-pass path
    crop = crop_face(ramp, detection)
    direct = cv2.warpAffine(ramp, alignment_matrix(detection), (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR)
    inner = (slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(crop[inner][..., :2].mean((0, 1)), direct[inner][..., :2].mean((0, 1)), atol=0.03)
