import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from emodetect.config import Augment, TrainConfig
from emodetect.data.transforms import Preprocess, augment_batch, to_model_input
from emodetect.errors import EmodetectError
from emodetect.training import class_weights, fit

TINY = TrainConfig(model="tiny", epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0, patience=5, bf16=False,
                   channels_last=False, seed=0)  # fmt: skip


def _splits(ds):
    return ds.subset("train"), ds.subset("val")


def test_two_epochs_run_and_the_training_loss_falls(tiny_dataset):
    tr, va = _splits(tiny_dataset)
    model, history, info = fit(replace(TINY, epochs=4), tr, va, progress=False, log=lambda m: None)
    losses = [h["train_loss"] for h in history]
    assert len(history) == 4 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert info["best_epoch"] >= 1 and not model.training


def test_early_stopping_fires_and_restores_the_best_weights(tiny_dataset):
    tr, va = _splits(tiny_dataset)
    frozen = replace(TINY, epochs=10, patience=2, lr=0.0, schedule="constant")  # nothing can improve
    _, history, info = fit(frozen, tr, va, progress=False, log=lambda m: None)
    assert info["stopped_early"] and len(history) == 3 and info["best_epoch"] == 1


def test_interrupted_run_resumes_bit_for_bit(tiny_dataset, tmp_path):
    tr, va = _splits(tiny_dataset)
    cfg = replace(TINY, epochs=3)
    full, full_hist, _ = fit(cfg, tr, va, tmp_path / "full", progress=False, log=lambda m: None)

    calls = {"n": 0}

    def interrupt(msg):
        if msg.startswith("epoch"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # killed after epoch 2's checkpoint was written

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tr, va, tmp_path / "cut", progress=False, log=interrupt)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    resumed, hist, _ = fit(cfg, tr, va, tmp_path / "cut", resume=True, progress=False, log=lambda m: None)
    assert [round(h["train_loss"], 10) for h in hist] == [round(h["train_loss"], 10) for h in full_hist]
    for k, v in full.state_dict().items():
        torch.testing.assert_close(v, resumed.state_dict()[k], rtol=0, atol=0)


def test_resume_refuses_a_different_config_or_a_missing_checkpoint(tiny_dataset, tmp_path):
    tr, va = _splits(tiny_dataset)
    fit(replace(TINY, epochs=1), tr, va, tmp_path, progress=False, log=lambda m: None)
    with pytest.raises(EmodetectError, match="different config"):
        fit(replace(TINY, epochs=1, lr=0.1), tr, va, tmp_path, resume=True, progress=False, log=lambda m: None)
    with pytest.raises(EmodetectError, match="no checkpoint"):
        fit(TINY, tr, va, tmp_path / "none", resume=True, progress=False, log=lambda m: None)


def test_class_weights_come_from_the_labels_given():
    w = class_weights(np.array([0, 0, 0, 1]), n_classes=3)
    np.testing.assert_allclose(w.numpy(), [4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_fit_uses_train_labels_only_for_class_weights(tiny_dataset, monkeypatch):
    tr, va = _splits(tiny_dataset)
    seen = []
    import emodetect.training.loop as loop

    real = loop.class_weights
    monkeypatch.setattr(loop, "class_weights", lambda labels, *a: seen.append(labels.copy()) or real(labels, *a))
    fit(replace(TINY, epochs=1), tr, va, progress=False, log=lambda m: None)
    assert len(seen) == 1 and np.array_equal(seen[0], tr.labels)


def test_augmentation_keeps_shapes_and_label_alignment():
    pre = Preprocess(size=48, mode="gray", mean=(0.0,), std=(1.0,))
    values = torch.arange(8, dtype=torch.uint8) * 30  # image i is flat grey i*30: its identity survives any warp
    x = values.view(8, 1, 1, 1).expand(8, 1, 96, 96).contiguous()
    out = augment_batch(x, pre, Augment(brightness=0, contrast=0, erase=0.5), torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 48, 48)
    np.testing.assert_allclose(out.mean(dim=(1, 2, 3)).numpy(), values.numpy() / 255, atol=0.02)


def test_identity_augmentation_equals_the_eval_preset():
    pre = Preprocess(size=96, mode="rgb", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    x = torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8)
    ident = Augment(rotation=0, zoom=(1, 1), shift=0, flip=0, brightness=0, contrast=0)
    torch.testing.assert_close(augment_batch(x, pre, ident), to_model_input(x, pre), atol=1e-4, rtol=0)


def test_config_round_trips_through_json():
    again = TrainConfig(**json.loads(json.dumps(asdict(TINY))))
    assert json.dumps(asdict(again)) == json.dumps(asdict(TINY))
