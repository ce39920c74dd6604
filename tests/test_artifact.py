import numpy as np
import pytest
import torch

from emodetect.data.transforms import Preprocess
from emodetect.errors import EmodetectError
from emodetect.models import create_model, get_spec
from emodetect.models.artifact import load_artifact, save_network, save_pipeline
from emodetect.models.predict import Predictor


def test_network_round_trip_predicts_the_same(tmp_path, tiny_dataset):
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    pre = get_spec("tiny").preprocess
    path = save_network(tmp_path / "m.safetensors", model, "tiny", pre, {"label_source": "folder"}, {"width": 8})
    art = load_artifact(path)
    assert art.name == "tiny" and art.preprocess == pre and art.meta["label_source"] == "folder"
    assert art.classes[0] == "anger" and "torch" in art.meta["versions"]
    images = tiny_dataset.images[:10]
    from emodetect.models.predict import predict_logits

    np.testing.assert_allclose(Predictor(art).logits(images), predict_logits(model, images, pre), atol=1e-5)
    half = load_artifact(save_network(tmp_path / "h.safetensors", model, "tiny", pre, {}, {"width": 8}, half=True))
    np.testing.assert_allclose(Predictor(half).logits(images), predict_logits(model, images, pre), atol=2e-2)
    assert (tmp_path / "h.safetensors").stat().st_size < (tmp_path / "m.safetensors").stat().st_size


def test_pipeline_round_trip_predicts_the_same(tmp_path, tiny_dataset):
    pre = get_spec("logreg").preprocess
    tr = tiny_dataset.subset("train")
    from emodetect.data.transforms import to_model_input

    x = to_model_input(tr.images, pre).reshape(len(tr), -1).numpy()
    pipe = create_model("hog_lbp_svm").fit(x, tr.labels)
    art = load_artifact(save_pipeline(tmp_path / "p.skops", pipe, "hog_lbp_svm", pre, {"label_source": "csv"}))
    np.testing.assert_array_equal(art.model.predict(x), pipe.predict(x))
    assert art.kind == "sklearn" and art.meta["label_source"] == "csv"


def test_other_image_sizes_and_colour_modes_go_through_the_models_preprocessing(tmp_path):
    model = create_model("tiny").eval()
    art = load_artifact(save_network(tmp_path / "m.safetensors", model, "tiny", get_spec("tiny").preprocess, {},
                                     {"width": 8}))  # fmt: skip
    rgb_big = np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    assert Predictor(art).predict_proba(rgb_big).shape == (3, 8)


def test_missing_corrupt_and_unknown_files_are_clear_errors(tmp_path):
    with pytest.raises(EmodetectError, match="model file not found"):
        load_artifact(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(EmodetectError, match="not a valid emodetect model file"):
        load_artifact(bad)
    bad_skops = tmp_path / "bad.skops"
    bad_skops.write_bytes(b"PK garbage")
    with pytest.raises(EmodetectError, match="not a valid emodetect model file"):
        load_artifact(bad_skops)
    other = tmp_path / "model.pkl"
    other.write_bytes(b"x")
    with pytest.raises(EmodetectError, match="unknown model file type"):
        load_artifact(other)


def test_pickled_payloads_are_refused(tmp_path):
    import skops.io as sio

    class Evil:  # defined here, so outside the allow-list of types
        pass

    path = tmp_path / "evil.skops"
    sio.dump({"pipeline": Evil(), "meta": "{}"}, path)
    with pytest.raises(EmodetectError, match="not allowed"):
        load_artifact(path)


def test_preprocess_round_trips():
    pre = Preprocess(112, "rgb", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert Preprocess.from_dict(pre.to_dict()) == pre
