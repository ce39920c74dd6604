"""The shipped models: `emodetect ship` on a tiny run, and the real shipped files on real faces."""

import json
from pathlib import Path

import numpy as np
import pytest

import emodetect
from emodetect.cli import main
from emodetect.models.predict import Predictor
from emodetect.ship import ship


def test_ship_writes_a_float16_model_and_a_card(tmp_path, tiny_dataset):
    from emodetect.runs import train

    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    run = tmp_path / "run"
    train("tiny", data, run, params={"epochs": 2, "batch_size": 16, "warmup_epochs": 0}, cache_dir=cache,
          progress=False, log=lambda m: None)  # fmt: skip
    record = json.loads((run / "metrics.json").read_text())
    record["robustness"]["jpeg30"]["accuracy"] = 0.123456  # what an older corruption code had measured
    (run / "metrics.json").write_text(json.dumps(record))
    card = ship(run, tmp_path / "weights", cache_dir=cache, command="emodetect train tiny ...", log=lambda m: None)
    shipped = emodetect.load_model(tmp_path / "weights" / "default.safetensors")
    assert isinstance(shipped, Predictor) and shipped.artifact.meta["dtype"] == "float16"
    assert str(Path(data).parent) not in json.dumps(shipped.artifact.meta)  # where the data was kept stays private
    assert Path(data).name in shipped.artifact.meta["source"]
    assert card["agreement_with_fp32"] > 0.95
    # the robustness table is measured on the shipped file, not copied from the run's record
    assert card["robustness"]["clean"]["accuracy"] == pytest.approx(card["test"]["accuracy"])
    assert card["robustness"]["jpeg30"]["accuracy"] != 0.123456
    text = (tmp_path / "weights" / "MODEL_CARD.md").read_text()
    for part in ("## Test-split metrics", "| class | precision", "Accuracy differs by file format", "## Licences",
                 "emodetect train tiny ...", "## Robustness"):  # fmt: skip
        assert part in text


def test_the_card_states_what_is_true_of_the_model_it_is_given(tmp_path, tiny_dataset):
    """Shipped from a tiny run, the card says the tiny model's own input size, settings, machine and licences."""
    from emodetect.runs import train

    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    source = str(tiny_dataset.sources[0])
    params = {"epochs": 2, "batch_size": 16, "warmup_epochs": 0, "tta_flip": False, "seed": 7, "patience": 3,
              "monitor": "val_macro_f1", "augment_by_source": {source: {"jpeg": 0.25}}}  # fmt: skip
    train("tiny", data, tmp_path / "run", params=params, cache_dir=cache, progress=False, log=lambda m: None)
    ship(tmp_path / "run", tmp_path / "w", cache_dir=cache, log=lambda m: None)
    text = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert "resized to 32x32 GRAY" in text and "112" not in text.split("## Training")[0]
    assert "test-time augmentation: none" in text and "mirror" not in text
    assert "seed 7" in text and "early stopping on val macro f1 (patience 3)" in text
    assert f"blur_sigma [0.5, 1.5]; on {source} images: jpeg 0.25" in text  # per-dataset augmentation stated
    assert "trained from scratch (no pretrained weights)" in text
    assert "Apache" not in text and "ImageNet" not in text  # EfficientNet's licence is not the tiny model's
    import os

    assert f"({os.cpu_count()} cores" in text and "a dataset this project does not know" in text
    assert "check the terms of your data" in text


def test_the_card_states_accuracy_by_file_format_per_dataset_and_within_a_class():
    from emodetect.ship import _limits_section

    per_class = {"happy": {"f1": 0.9}, "contempt": {"f1": 0.4}, "fear": {"f1": 0.5}}
    affectnet = {"by_format": {"jpeg": {"accuracy": 0.58, "n": 1631}, "png": {"accuracy": 0.857, "n": 553}},
                 "by_format_within_class": {"contempt": {"jpeg": {"accuracy": 0.661, "n": 245},
                                                         "png": {"accuracy": 0.0, "n": 14}}}}  # fmt: skip
    fer = {"by_format": {"jpeg": {"accuracy": 0.66, "n": 2799}}, "by_format_within_class": {}}
    m = {"by_format": {"jpeg": {"accuracy": 0.631, "n": 4430}, "png": {"accuracy": 0.857, "n": 553}},
         "by_source": {"affectnet": affectnet, "fer2013": fer}, "per_class": per_class}  # fmt: skip
    text = "\n".join(_limits_section({"test": m, "preprocess": {"size": 112}}))
    assert "by file format** on affectnet faces" in text and "a gap of 27.7 points" in text  # not FER2013's JPEGs too
    assert "n=4,430" not in text and "fer2013" not in text
    assert "**Within one class**" in text and "contempt JPEG 66.1% (n=245), PNG 0.0% (n=14)" in text
    affectnet["by_format_within_class"] = {}  # each class in one format only: no such line
    assert "Within one class" not in "\n".join(_limits_section({"test": m, "preprocess": {"size": 112}}))
    del m["by_source"]  # metrics from before per-dataset formats: the split's own
    assert "by file format**, a proxy" in "\n".join(_limits_section({"test": m, "preprocess": {"size": 112}}))


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["default", "fast"])
def test_shipped_models_classify_real_affectnet_and_fer2013_faces(name, real_zip, real_cache, real_fer_faces):
    """A few hundred stored-test-split AffectNet faces and 200 FER2013 faces, read from ../shared at test time."""
    from emodetect.data import load_dataset

    model = emodetect.load_model(name)  # committed in the package: never skipped
    fer, fer_labels = real_fer_faces
    fer_accuracy = (model.predict(fer) == fer_labels).mean()
    assert fer_accuracy > 0.45  # 7 classes, the majority one (happy) 25%; the model card reports the test split
    ds = load_dataset(real_zip, mode=model.artifact.preprocess.mode, cache_dir=real_cache, progress=False).subset("test")
    pick = np.random.default_rng(0).choice(len(ds), 300, replace=False)
    proba = model.predict_proba(ds.images[pick])
    assert proba.shape == (300, 8) and np.allclose(proba.sum(1), 1, atol=1e-5)
    accuracy = (proba.argmax(1) == ds.labels[pick]).mean()
    assert accuracy > 0.5  # chance is 1/8 and the majority class 17%; the model card reports the full split
    gray = ds.images[pick[:8]].mean(axis=-1).astype(np.uint8) if ds.images.ndim == 4 else ds.images[pick[:8]]
    assert model.predict(gray).shape == (8,)  # other colour modes go through the model's own preprocessing


@pytest.mark.real_data
def test_the_shipped_fast_model_runs_its_int8_graph_and_agrees_with_its_weights(real_zip, real_cache):
    """`fast` ships an int8 graph of its own weights; load_model runs it, and on real test faces it predicts
    what the float16 weights predict (the card measures both on the whole split)."""
    from emodetect.data import load_dataset
    from emodetect.models.export import int8_path

    model = emodetect.load_model("fast")
    assert model.backend == "int8" and int8_path(model.artifact.path).is_file()
    ds = load_dataset(real_zip, mode="rgb", cache_dir=real_cache, progress=False).subset("test")
    faces = ds.images[np.random.default_rng(1).choice(len(ds), 400, replace=False)]
    agree = (model.predict(faces) == Predictor(model.artifact, backend="onnx").predict(faces)).mean()
    assert agree > 0.95


@pytest.mark.real_data
def test_evaluate_uses_the_shipped_model_by_default(real_zip, real_cache, capsys):
    assert main(["evaluate", "--data", str(real_zip), "--json", "--cache-dir", str(real_cache)]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["split"] == "test" and m["n_images"] == 2184 and m["model"] == emodetect.load_model().artifact.name


def test_ship_int8_keeps_a_graph_of_these_weights_that_load_model_runs(tmp_path, tiny_dataset, monkeypatch):
    """`ship --int8` writes NAME.int8.onnx beside the weights when the accuracy check passes (the limit is forced
    both ways here: a tiny test split moves in steps of several points), and removes a stale one otherwise."""
    import functools

    import emodetect.ship as ship_module
    from emodetect.models.export import onnx_session, read_onnx_metadata, weights_sha256
    from emodetect.runs import int8_check, load_run, train

    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    train("tiny", data, tmp_path / "run", params={"epochs": 2, "batch_size": 16, "warmup_epochs": 0, "tta_flip": False},
          cache_dir=cache, progress=False, log=lambda m: None)  # fmt: skip
    weights = tmp_path / "w"
    monkeypatch.setattr(ship_module, "int8_check", functools.partial(int8_check, limit=1.0))
    card = ship(tmp_path / "run", weights, cache_dir=cache, int8=True, log=lambda m: None)
    graph = weights / "default.int8.onnx"
    model = emodetect.load_model(weights / "default.safetensors")
    assert model.backend == "int8" and card["backend"] == "int8" and card["int8"]["kept"]
    meta = read_onnx_metadata(graph)
    assert meta["weights_sha256"] == weights_sha256(model.artifact.model) and "are this graph's" in meta["quantization"]
    assert meta["card"] == model.artifact.meta["card"]  # the final card, not the one before it was measured
    faces = np.random.default_rng(0).integers(0, 256, (32, 32, 32), dtype=np.uint8)
    (p8,) = onnx_session(graph.read_bytes()).run(["probabilities"], {"images": faces[..., None]})
    np.testing.assert_allclose(model.predict_proba(faces), p8, atol=1e-6)  # the Predictor runs that graph
    assert np.abs(p8 - Predictor(model.artifact, backend="onnx").predict_proba(faces)).max() < 0.05
    text = (weights / "MODEL_CARD.md").read_text()
    assert "an int8 ONNX graph of them" in text and "through the int8 graph in ONNX Runtime" in text
    assert "kept because on the validation split" in text
    # kept or not is decided on the validation split; the test split's change is only reported
    q = card["int8"]
    _, _, val, test = load_run(tmp_path / "run").load_splits(cache_dir=cache)
    assert (q["n_val_images"], q["n_images"]) == (len(val), len(test))
    val_fp16 = Predictor(model.artifact, backend="onnx").predict(val.images)
    assert q["val_fp32_accuracy"] == float((val_fp16 == val.labels).mean())

    monkeypatch.setattr(ship_module, "int8_check", functools.partial(int8_check, limit=-1.0))  # never kept
    card = ship(tmp_path / "run", weights, cache_dir=cache, int8=True, log=lambda m: None)
    assert not card["int8"]["kept"] and not graph.exists() and card["backend"] == "onnx"
    assert "int8" not in (weights / "MODEL_CARD.md").read_text()


def test_an_int8_graph_of_other_weights_is_never_used(tmp_path, monkeypatch):
    import shutil

    import torch

    from emodetect.models import create_model, get_spec
    from emodetect.models.artifact import load_artifact, save_network
    from emodetect.models.export import export_onnx, int8_path, quantize_int8, weights_sha256, with_onnx_metadata

    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        files.append(save_network(tmp_path / f"m{seed}.safetensors", create_model("tiny", width=8).eval(), "tiny",
                                  get_spec("tiny").preprocess, {"tta_flip": False}, {"width": 8}))  # fmt: skip
    other = load_artifact(files[1])
    faces = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 1), dtype=np.uint8)
    graph = with_onnx_metadata(quantize_int8(export_onnx(other), faces), {"weights_sha256": weights_sha256(other.model)})
    int8_path(files[1]).write_bytes(graph)
    assert Predictor(load_artifact(files[1])).backend == "int8"
    shutil.copy(int8_path(files[1]), int8_path(files[0]))  # beside the first model: made from other weights
    first = load_artifact(files[0])
    assert Predictor(first).backend == "onnx"
    with pytest.raises(ValueError, match="no int8 graph"):
        Predictor(first, backend="int8")
    assert Predictor(load_artifact(files[1]), tta_flip=True).backend == "fused"  # the graph has no mirror average
    monkeypatch.setattr("emodetect.models.predict.onnxruntime_available", lambda: False)  # a --no-deps install
    assert Predictor(first).backend == "fused"
    for backend in ("onnx", "int8"):
        with pytest.raises(ValueError, match=f"the {backend} backend needs onnxruntime"):
            Predictor(first, backend=backend)


def test_the_card_says_what_a_student_was_distilled_from_and_started_at():
    from dataclasses import asdict

    from emodetect.config import TrainConfig
    from emodetect.ship import _training_section

    def card(fit=None, **options):
        return "\n".join(_training_section({
            "config": asdict(TrainConfig(model="fastlite", **options)), "fit": fit or {}, "environment": {}, "datasets": {},
            "n_train_by_source": {}, "label_source": "folder", "split_seed": 0, "n_train": 10, "train_seconds": 60,
            "pretrained": "ImageNet", "pretrained_licence": "Apache-2.0", "inference_images_per_second": None,
            "command": "emodetect train ..."}))  # fmt: skip

    plain = card()
    assert "distilled" not in plain and "shares with" not in plain
    student = card(teacher="default", distill_alpha=0.7, distill_temperature=3.0, init_from="default")
    assert "- distilled from `default`: its soft targets (each clean train image, once) at temperature 3.0 weigh 0.7, " \
           "the labels 0.3" in student
    assert "ImageNet (Apache-2.0), new 8-class head; then every layer it shares with `default`" in student
    assert "every augmented batch" in card(teacher="default", distill_views="augmented")
    ensemble = card(teacher=["default", "runs/lite2"], distill_alpha=0.5, distill_temperature=2.0)
    assert "- distilled from an ensemble of `default`, `runs/lite2`: the mean of their logits as soft targets (each " \
           "clean train image, once) at temperature 2.0 weigh 0.5, the labels 0.5" in ensemble
    recorded = card({"teacher_sha256": ["a" * 64, "b" * 64], "init_from_sha256": "c" * 64},
                    teacher=["default", "runs/lite2"], init_from="default")  # fmt: skip
    assert "an ensemble of `default` (file SHA-256 aaaaaaaaaaaa), `runs/lite2` (file SHA-256 bbbbbbbbbbbb)" in recorded
    assert "shares with `default` (file SHA-256 cccccccccccc)" in recorded


def test_a_shipped_file_and_card_name_other_runs_without_the_makers_paths(tmp_path):
    from emodetect.ship import config_without_machine_paths, without_machine_paths

    me = tmp_path / "me"
    cfg = {"teacher": ["default", str(me / "runs" / "lite2"), "C:\\Users\\me\\runs\\lite1"],
           "init_from": str(me / "runs" / "base" / "model.safetensors"), "lr": 1}  # fmt: skip
    assert config_without_machine_paths(cfg) == {"teacher": ["default", "lite2", "lite1"],
                                                 "init_from": "base/model.safetensors", "lr": 1}  # fmt: skip
    assert config_without_machine_paths({"teacher": "fast", "init_from": None}) == {"teacher": "fast", "init_from": None}
    meta = without_machine_paths({"config": {"teacher": str(me / "runs" / "lite2")}, "source": str(me / "a.zip"),
                                  "datasets": {"b": {"path": "D:\\data\\b.zip"}}})  # fmt: skip
    assert str(tmp_path) not in json.dumps(meta) and "data" not in json.dumps(meta["datasets"])
    assert meta["config"]["teacher"] == "lite2" and meta["source"] == "a.zip" and meta["datasets"]["b"]["path"] == "b.zip"
