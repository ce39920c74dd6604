"""Detection detectors: the API on synthetic images, MTCNN and Haar on a few real WIDER FACE photos, the weights."""

from __future__ import annotations

import csv
import importlib.util
import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from emodetect.errors import EmodetectError
from emodetect.inference.faces import (
    DETECTORS,
    WEIGHTS,
    Detection,
    area_resize,
    convert_facenet_weights,
    create_detector,
    integral,
    pool,
    resize_whole,
)

FACES_ZIP = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "faces" / "faces.zip").resolve()
# photos whose valid faces with h >= 100 MTCNN finds (1 to 4 large faces each, 512-768 px tall)
LARGE_FACE_PHOTOS = (
    "20--Family_Group/20_Family_Group_Family_Group_20_1003.jpg",
    "20--Family_Group/20_Family_Group_Family_Group_20_730.jpg",
    "19--Couple/19_Couple_Couple_19_125.jpg",
    "4--Dancing/4_Dancing_Dancing_4_854.jpg",
)


def texture(seed=1, size=(160, 120)) -> np.ndarray:
    """Smooth random colour texture: no face, but loose MTCNN thresholds find face-like spots in it."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (24, 32, 3)).astype(np.uint8), size, interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def loose_mtcnn():
    return create_detector("mtcnn", thresholds=(0.1, 0.1, 0.1), score_threshold=None)


def test_unknown_detector_and_option():
    with pytest.raises(EmodetectError, match="mtcnn, haar"):
        create_detector("yolo")
    with pytest.raises(EmodetectError, match="unknown option"):
        create_detector("haar", thresholds=(0.5, 0.5, 0.5))
    assert DETECTORS == ("mtcnn", "haar")


@pytest.mark.parametrize("name", DETECTORS)
def test_blank_tiny_and_bad_input(name):
    det = create_detector(name)
    assert det.name == name
    assert det.detect(np.zeros((120, 160, 3), np.uint8)) == []
    assert det.detect(np.full((8, 8, 3), 128, np.uint8)) == []  # smaller than any face
    for bad in (np.zeros((20, 20), np.uint8), np.zeros((20, 20, 3), np.float32), [[0, 0, 0]]):
        with pytest.raises(EmodetectError, match="uint8"):
            det.detect(bad)


def test_mtcnn_faces_are_typed_and_sorted(loose_mtcnn):
    faces = loose_mtcnn.detect(texture())
    assert len(faces) >= 2
    assert all(isinstance(f, Detection) and len(f.box) == 4 and f.box[2] > 0 and f.box[3] > 0 for f in faces)
    assert all(f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32 for f in faces)
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True) and all(0.1 < s <= 1 for s in scores)
    cut = create_detector("mtcnn", thresholds=(0.1, 0.1, 0.1), score_threshold=scores[0]).detect(texture())
    assert [f.score for f in cut] == scores[:1]


def test_max_side_maps_boxes_back(loose_mtcnn):
    img = texture()
    big = cv2.resize(img, (320, 240), interpolation=cv2.INTER_NEAREST)  # INTER_AREA halves it back exactly
    small_faces = loose_mtcnn.detect(img)
    big_faces = create_detector("mtcnn", thresholds=(0.1, 0.1, 0.1), score_threshold=None, max_side=160).detect(big)
    assert len(big_faces) == len(small_faces) > 0
    for s, b in zip(small_faces, big_faces):
        np.testing.assert_allclose(b.box, np.multiply(s.box, 2), rtol=1e-5)
        np.testing.assert_allclose(b.landmarks, s.landmarks * 2, rtol=1e-5)


def test_weights_load_lazily_and_once(loose_mtcnn):
    det = create_detector("mtcnn")
    assert det._nets is None
    det.detect(np.zeros((60, 60, 3), np.uint8))
    nets = det._nets
    det.detect(np.zeros((60, 60, 3), np.uint8))
    assert det._nets is nets and not nets[0].training


def test_summed_area_resizes_equal_torch_area_interpolation():
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    image = torch.tensor(rgb).permute(2, 0, 1)[None].double()  # (1, 3, H, W)
    sat = integral(rgb)
    assert sat.shape == (38, 54, 3) and sat[-1, -1].tolist() == rgb.reshape(-1, 3).sum(0).tolist()
    for out in [(12, 17), (37, 53), (5, 40), (50, 60)]:  # shrinking, identity, mixed, enlarging
        want = torch.nn.functional.interpolate(image, out, mode="area").float()
        torch.testing.assert_close(resize_whole(sat, *out), want, rtol=0, atol=1e-5)
    x1, y1, x2, y2 = torch.tensor([0, 10]), torch.tensor([3, 0]), torch.tensor([24, 53]), torch.tensor([27, 37])
    got = area_resize(sat, x1, y1, x2, y2, 24, 24)
    for k in range(2):
        crop = image[:, :, int(y1[k]) : int(y2[k]), int(x1[k]) : int(x2[k])]
        want = torch.nn.functional.interpolate(crop, (24, 24), mode="area").float()[0]
        torch.testing.assert_close(got[k], want, rtol=0, atol=1e-5)


def test_pool_is_caffe_ceil_mode_max_pooling():
    x = torch.randn(2, 5, 11, 8)
    want = torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
    assert pool(x, 3, 2).shape == (2, 5, 5, 4) and torch.equal(pool(x, 3, 2), want)


def test_converted_weights_match_facenet():
    spec = importlib.util.find_spec("facenet_pytorch")  # locates the package without importing it
    data = Path(next(iter(spec.submodule_search_locations))) / "data" if spec else None
    if data is None or not (data / "onet.pt").exists():
        pytest.skip("facenet-pytorch's weight files are not installed")
    from importlib import resources

    from safetensors.torch import load

    shipped = load(resources.files("emodetect.weights").joinpath(WEIGHTS).read_bytes())
    converted = convert_facenet_weights(data)
    assert shipped.keys() == converted.keys() and len(shipped) == 13 + 16 + 21
    assert all(torch.equal(shipped[k], converted[k]) for k in shipped)


# ------------------------------------------------------------------------------------------------ real photos


@pytest.fixture(scope="module")
def large_face_photos():
    if not FACES_ZIP.exists():
        pytest.skip(f"shared faces zip not found at {FACES_ZIP}")
    with zipfile.ZipFile(FACES_ZIP) as z:
        rows = list(csv.DictReader(io.TextIOWrapper(z.open("boxes.csv"), "utf-8")))
        out = []
        for file in LARGE_FACE_PHOTOS:
            bgr = cv2.imdecode(np.frombuffer(z.read("images/" + file), np.uint8), cv2.IMREAD_COLOR)
            mine = [r for r in rows if r["file"] == file and r["invalid"] == "0" and float(r["h"]) >= 100]
            out.append((file, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), [[float(r[k]) for k in "xywh"] for r in mine]))
    return out


def iou(a, b) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


@pytest.mark.real_data
def test_mtcnn_finds_large_faces_with_landmarks_inside(large_face_photos):
    det = create_detector("mtcnn")
    for file, rgb, large in large_face_photos:
        faces = det.detect(rgb)
        assert large, file
        for truth in large:
            best = max(faces, key=lambda f: iou(f.box, truth))
            assert iou(best.box, truth) >= 0.5, file
            x, y, w, h = best.box
            lm = best.landmarks
            assert ((lm[:, 0] >= x) & (lm[:, 0] <= x + w) & (lm[:, 1] >= y) & (lm[:, 1] <= y + h)).all(), file
            assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], file  # left eye / mouth corner left of right ones
            assert lm[[0, 1], 1].max() < lm[[3, 4], 1].min(), file  # eyes above the mouth


@pytest.mark.real_data
def test_haar_finds_a_face(large_face_photos):
    det = create_detector("haar")
    for file, rgb, _ in large_face_photos:
        faces = det.detect(rgb)
        assert faces and all(f.landmarks is None for f in faces), file
