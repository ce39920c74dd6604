import numpy as np
import pytest

from emodetect.data.transforms import to_pixel_rows
from emodetect.models import create_model, get_spec
from emodetect.models.classical import FaceFeatures, _uniform_lut, lbp_histograms, pipeline_embeddings

SMALL = {"logreg": {"pca__n_components": 20}, "random_forest": {"pca__n_components": 20, "clf__n_estimators": 20},
         "mlp": {"pca__n_components": 20, "clf__hidden_layer_sizes": (32, 16, 8), "clf__max_iter": 300,
                 "clf__learning_rate_init": 1e-2, "clf__n_iter_no_change": 30},
         "logreg_raw": {}, "hog_lbp_svm": {}}  # fmt: skip


def _xy(ds, split):
    d = ds.subset(split)
    x = to_pixel_rows(d.images, get_spec("logreg").preprocess)
    return x, d.labels


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_pipeline_fits_and_predicts_on_tiny_data(name, tiny_dataset):
    x, y = _xy(tiny_dataset, "train")
    xt, yt = _xy(tiny_dataset, "test")
    pipe = create_model(name, **SMALL[name]).fit(x, y)
    pred = pipe.predict(xt)
    assert pred.shape == yt.shape
    assert (pred == yt).mean() > 0.5  # the synthetic classes are easy; chance is 1/8


def test_study_defaults_are_the_papers():
    assert create_model("logreg").get_params()["pca__n_components"] == 1000
    rf = create_model("random_forest").get_params()
    assert rf["clf__n_estimators"] == 300 and rf["clf__max_depth"] == 20
    assert len(create_model("mlp").get_params()["clf__hidden_layer_sizes"]) == 3
    assert create_model("logreg").get_params()["clf__class_weight"] == "balanced"
    assert create_model("logreg", clf__C=0.3).get_params()["clf__C"] == 0.3


def test_uniform_lbp_has_58_uniform_codes_and_normalised_histograms():
    lut = _uniform_lut()
    assert len(set(lut[lut < 58])) == 58 and (lut == 58).sum() == 256 - 58
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 96, 96), dtype=np.uint8)
    h = lbp_histograms(imgs, grid=4).reshape(3, 16, 59)
    np.testing.assert_allclose(h.sum(axis=2), 1.0, rtol=1e-6)
    flat = np.full((1, 96, 96), 7, np.uint8)  # every neighbour >= centre: code 255, a uniform pattern
    hf = lbp_histograms(flat, grid=1)[0]
    assert hf[lut[255]] == 1.0


def test_face_features_shapes():
    x = np.random.default_rng(0).random((2, 96 * 96)).astype(np.float32)
    hog = FaceFeatures(lbp=False).fit_transform(x)
    assert hog.shape == (2, 11 * 11 * 36)
    both = FaceFeatures(lbp_grid=6).fit_transform(x)
    assert both.shape == (2, 11 * 11 * 36 + 36 * 59)


def test_mlp_embeddings_are_its_last_hidden_layer(tiny_dataset):
    x, y = _xy(tiny_dataset, "train")
    pipe = create_model("mlp", **SMALL["mlp"]).fit(x, y)
    emb = pipeline_embeddings(pipe, x[:5])
    assert emb.shape == (5, 8) and (emb >= 0).all()
    clf = pipe.steps[-1][1]
    logits = emb @ clf.coefs_[-1] + clf.intercepts_[-1]
    np.testing.assert_array_equal(clf.classes_[logits.argmax(1)], pipe.predict(x[:5]))
