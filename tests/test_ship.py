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
    card = ship(run, tmp_path / "weights", cache_dir=cache, command="emodetect train tiny ...", log=lambda m: None)
    shipped = emodetect.load_model(tmp_path / "weights" / "default.safetensors")
    assert isinstance(shipped, Predictor) and shipped.artifact.meta["dtype"] == "float16"
    assert str(Path(data).parent) not in json.dumps(shipped.artifact.meta)  # where the data was kept stays private
    assert Path(data).name in shipped.artifact.meta["source"]
    assert card["fp16_agreement_with_fp32"] > 0.95
    text = (tmp_path / "weights" / "MODEL_CARD.md").read_text()
    for part in ("## Test-split metrics", "| class | precision", "Accuracy differs by file format", "## Licences",
                 "emodetect train tiny ..."):  # fmt: skip
        assert part in text


def test_the_card_states_what_is_true_of_the_model_it_is_given(tmp_path, tiny_dataset):
    """Shipped from a tiny run, the card says the tiny model's own input size, settings, machine and licences."""
    from emodetect.runs import train

    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    params = {"epochs": 2, "batch_size": 16, "warmup_epochs": 0, "tta_flip": False, "seed": 7, "patience": 3,
              "monitor": "val_macro_f1"}  # fmt: skip
    train("tiny", data, tmp_path / "run", params=params, cache_dir=cache, progress=False, log=lambda m: None)
    ship(tmp_path / "run", tmp_path / "w", cache_dir=cache, log=lambda m: None)
    text = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert "resized to 32x32 GRAY" in text and "112" not in text.split("## Training")[0]
    assert "test-time augmentation: none" in text and "mirror" not in text
    assert "seed 7" in text and "early stopping on val macro f1 (patience 3)" in text
    assert "trained from scratch (no pretrained weights)" in text
    assert "Apache" not in text and "ImageNet" not in text  # EfficientNet's licence is not the tiny model's
    import os

    assert f"({os.cpu_count()} cores" in text and "a dataset this project does not know" in text
    assert "check the terms of your data" in text


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
def test_evaluate_uses_the_shipped_model_by_default(real_zip, real_cache, capsys):
    assert main(["evaluate", "--data", str(real_zip), "--json", "--cache-dir", str(real_cache)]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["split"] == "test" and m["n_images"] == 2184 and m["model"] == emodetect.load_model().artifact.name
