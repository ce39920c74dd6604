"""The Predictor's input contract: what it accepts, and one ValueError naming the problem for the rest."""

import numpy as np
import pytest
import torch

from emodetect.data.transforms import as_image_batch
from emodetect.models import create_model, get_spec
from emodetect.models.artifact import load_artifact, save_network
from emodetect.models.predict import Predictor


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    save_network(path, create_model("tiny").eval(), "tiny", get_spec("tiny").preprocess, {}, {"width": 8})
    return Predictor(load_artifact(path))


RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (4, 40, 40), dtype=np.uint8)
RGB = RNG.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)


def test_accepted_forms_give_one_row_per_face(predictor):
    base = predictor.predict_proba(RGB)
    assert base.shape == (4, 8) and np.allclose(base.sum(1), 1)
    np.testing.assert_allclose(predictor.predict_proba(RGB[0]), base[:1], atol=1e-6)  # one (H, W, 3) face
    np.testing.assert_allclose(predictor.predict_proba(GRAY[0]), predictor.predict_proba(GRAY[:1]), atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(GRAY[..., None]), predictor.predict_proba(GRAY), atol=1e-6)
    # floats in [0, 1] are pixels / 255, not 0-255 values
    np.testing.assert_allclose(predictor.predict_proba(RGB / 255.0), base, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(RGB.astype(np.int64)), base, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(RGB.tolist()), base, atol=1e-6)


def test_an_empty_batch_returns_zero_rows(predictor):
    for empty in (np.zeros((0, 40, 40), np.uint8), np.zeros((0, 40, 40, 3), np.uint8), [], np.array([])):
        assert predictor.predict_proba(empty).shape == (0, 8)
        assert predictor.predict(empty).shape == (0,)


@pytest.mark.parametrize("bad, message", [
    (np.full((2, 40, 40), np.nan, np.float32), "NaN"),
    (RGB.astype(np.float32), r"\[0, 1\]"),  # 0-255 floats: would have been every face 'sad'
    (-RGB.astype(np.int16) - 1, "0-255"),
    (RGB.astype(np.int32) + 300, "0-255"),
    (np.zeros((2, 40, 40, 4), np.uint8), "4 channels"),
    (np.zeros((40, 40, 4), np.uint8), "4 channels"),
    (np.zeros((2, 3, 40, 40), np.uint8), "channels-first"),
    (np.zeros((2, 40, 40), bool), "boolean"),
    (np.zeros((2, 40, 40), np.uint16), "uint16"),
    (np.zeros((2, 2, 40, 40, 3), np.uint8), "shape"),
    (np.zeros((5,), np.uint8), "shape"),
    (np.array(["a", "b"]), "dtype"),
    ([np.zeros((4, 4)), np.zeros((5, 5))], "different sizes"),
    (np.zeros((3, 0, 40), np.uint8), "size 0"),
])  # fmt: skip
def test_everything_else_is_one_value_error_naming_the_problem(predictor, bad, message):
    for method in (predictor.predict_proba, predictor.predict, predictor.logits):
        with pytest.raises(ValueError, match=message):
            method(bad)


def test_as_image_batch_normalises_shapes_and_types():
    assert as_image_batch(RGB[0]).shape == (1, 40, 40, 3)
    assert as_image_batch(GRAY).shape == (4, 40, 40) and as_image_batch(GRAY).dtype == np.uint8
    np.testing.assert_array_equal(as_image_batch(RGB / 255.0), RGB)
    assert as_image_batch(torch.from_numpy(GRAY)).shape == (4, 40, 40)


def test_tensors_of_any_kind_follow_the_same_contract(predictor):
    base = predictor.predict_proba(RGB)
    half = torch.from_numpy(RGB / 255.0).to(torch.bfloat16)
    assert predictor.predict_proba(half).shape == (4, 8)
    np.testing.assert_allclose(predictor.predict_proba(torch.from_numpy(RGB)), base, atol=1e-6)
    for odd in (torch.zeros((2, 40, 40), device="meta"), torch.zeros((2, 40, 40)).to_sparse()):
        with pytest.raises(ValueError, match="dense tensor"):
            predictor.predict_proba(odd)


def test_an_empty_batch_embeds_to_zero_rows_of_the_right_width(predictor, tmp_path, tiny_dataset):
    emb = predictor.embed(RGB)
    assert predictor.embed(np.zeros((0, 40, 40), np.uint8)).shape == (0, emb.shape[1])
    from emodetect.data.transforms import to_pixel_rows
    from emodetect.models.artifact import save_pipeline

    tr = tiny_dataset.subset("train")
    pipe = create_model("logreg", pca__n_components=5).fit(to_pixel_rows(tr.images, get_spec("logreg").preprocess), tr.labels)
    sk = Predictor(load_artifact(save_pipeline(tmp_path / "p.skops", pipe, "logreg", get_spec("logreg").preprocess, {})))
    assert sk.embed(np.zeros((0, 96, 96), np.uint8)).shape == (0, 5)
