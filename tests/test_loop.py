import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from emodetect.config import Augment, TrainConfig
from emodetect.data.transforms import Preprocess, augment_batch, to_model_input
from emodetect.errors import EmodetectError
from emodetect.models.registry import resolve_model_config
from emodetect.training import class_weights, fit_network

TINY = TrainConfig(model="tiny", epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0, patience=5, bf16=False,
                   channels_last=False, seed=0)  # fmt: skip


def fit(cfg: TrainConfig, *args, **kwargs):
    """fit_network on a TrainConfig resolved the way runs resolve it; (model, history, info)."""
    r = fit_network(resolve_model_config(cfg.model, {k: v for k, v in asdict(cfg).items() if k != "model"}),
                    *args, **kwargs)  # fmt: skip
    return r.model, r.history, r.info


def _splits(ds):
    return ds.subset("train"), ds.subset("val")


def _tiny_model_file(tr, va, path, epochs: int = 1):
    """A tiny network fitted on the tiny splits and saved as a model file; (network, path)."""
    from emodetect.models.artifact import save_network

    model, _, _ = fit(replace(TINY, epochs=epochs), tr, va, progress=False, log=lambda m: None)
    return model, save_network(path, model, "tiny", resolve_model_config("tiny").preprocess, {"tta_flip": False},
                               {"width": 8})  # fmt: skip


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


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_interrupted_run_resumes_bit_for_bit(tiny_dataset, tmp_path, ema_decay):
    tr, va = _splits(tiny_dataset)
    cfg = replace(TINY, epochs=3, ema_decay=ema_decay)
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


def test_a_run_stopped_early_resumes_with_more_patience_as_if_it_had_never_stopped(tiny_dataset, tmp_path):
    tr, va = _splits(tiny_dataset)
    quiet = dict(progress=False, log=lambda m: None)
    cfg = replace(TINY, epochs=8, lr=0.05, patience=1)
    _, stopped, info = fit(cfg, tr, va, tmp_path / "run", **quiet)
    assert info["stopped_early"] and len(stopped) < 8
    whole, whole_hist, whole_info = fit(replace(cfg, patience=8), tr, va, **quiet)
    resumed, hist, resumed_info = fit(replace(cfg, patience=8), tr, va, tmp_path / "run", resume=True, **quiet)
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in whole_hist] and len(hist) == 8
    assert resumed_info["best_epoch"] == whole_info["best_epoch"]
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(v, resumed.state_dict()[k], rtol=0, atol=0)


def test_patience_reached_at_the_last_epoch_is_a_full_run_not_an_early_stop(tiny_dataset):
    tr, va = _splits(tiny_dataset)
    said = []
    cfg = replace(TINY, epochs=3, lr=0.0, schedule="constant", patience=2)  # nothing improves after epoch 1
    _, hist, info = fit(cfg, tr, va, progress=False, log=said.append)
    assert len(hist) == 3 and not info["stopped_early"] and not any("early stopping" in m for m in said)
    _, hist, info = fit(replace(cfg, epochs=5), tr, va, progress=False, log=said.append)
    assert len(hist) == 3 and info["stopped_early"] and "early stopping" in said[-1]


def test_resume_refuses_less_patience_where_the_run_would_have_stopped_earlier(tiny_dataset, tmp_path):
    from emodetect.training.loop import _stop_epoch

    history = [{"val_accuracy": v} for v in (0.3, 0.5, 0.4, 0.45, 0.6, 0.55)]
    assert _stop_epoch(history, "val_accuracy", 2) == 4 and _stop_epoch(history, "val_accuracy", 3) is None
    tr, va = _splits(tiny_dataset)
    quiet = dict(progress=False, log=lambda m: None)
    cfg = replace(TINY, epochs=3, lr=0.0, schedule="constant", patience=5)  # nothing improves after epoch 1
    fit(cfg, tr, va, tmp_path, **quiet)
    with pytest.raises(EmodetectError, match="patience 1 this run would have stopped after epoch 2"):
        fit(replace(cfg, patience=1), tr, va, tmp_path, resume=True, **quiet)


def test_a_checkpoint_from_before_an_option_existed_counts_it_at_its_default():
    from emodetect.training.loop import resumable, with_defaults

    now = json.loads(json.dumps(asdict(TINY)))
    old = {k: v for k, v in now.items() if k not in ("distill_alpha", "prior_correction")}
    assert with_defaults(old) == now and resumable(old, now)
    assert resumable(old, {**now, "prior_correction": True, "patience": 50})  # may change on resume
    assert not resumable(old, {**now, "distill_alpha": 0.5}) and not resumable(None, now)
    assert with_defaults({"C": 1.0}) == {"C": 1.0}  # a pipeline's parameters: as they are


def test_resume_refuses_a_different_config_or_a_missing_checkpoint(tiny_dataset, tmp_path):
    tr, va = _splits(tiny_dataset)
    fit(replace(TINY, epochs=1), tr, va, tmp_path, progress=False, log=lambda m: None)
    with pytest.raises(EmodetectError, match="different config"):
        fit(replace(TINY, epochs=1, lr=0.1), tr, va, tmp_path, resume=True, progress=False, log=lambda m: None)
    with pytest.raises(EmodetectError, match="no checkpoint"):
        fit(TINY, tr, va, tmp_path / "none", resume=True, progress=False, log=lambda m: None)


def test_the_weight_average_follows_timms_rule_and_copies_integer_buffers():
    from emodetect.training.loop import WeightEma

    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    ema = WeightEma(net, decay=0.5)
    w = net[0].weight
    avg = float(w.detach())
    for step, value in enumerate([1.0, 2.0, 4.0], start=1):
        with torch.no_grad():
            w.fill_(value)
        net[1].num_batches_tracked.fill_(7 * step)
        ema.update(net)
        d = min(0.5, (1 + step) / (10 + step))  # warm-up: 2/11 and 3/12, then the decay itself
        avg = d * avg + (1 - d) * value
        assert float(ema.module[0].weight) == pytest.approx(avg, abs=1e-6)
        assert int(ema.module[1].num_batches_tracked) == 7 * step  # copied, not averaged
    assert not ema.module.training and not ema.module[0].weight.requires_grad


def test_a_run_with_a_weight_average_keeps_the_average(tiny_dataset, tmp_path):
    tr, va = _splits(tiny_dataset)
    model, history, _ = fit(replace(TINY, epochs=1, ema_decay=0.99), tr, va, tmp_path, progress=False,
                            log=lambda m: None)  # fmt: skip
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["ema"]["updates"] == len(tr) // TINY.batch_size
    kept, trained = ck["ema"]["weights"], ck["model"]
    assert any(not torch.equal(kept[k], trained[k]) for k in kept)  # the average is not the last step's weights
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, kept[k], rtol=0, atol=0)
    assert 0 <= history[0]["val_accuracy_unaveraged"] <= 1  # the network's own weights, for the record
    with pytest.raises(EmodetectError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_class_weights_come_from_the_labels_given():
    w = class_weights(np.array([0, 0, 0, 1]), n_classes=3)
    np.testing.assert_allclose(w.numpy(), [4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_the_prior_offsets_undo_the_class_weights_and_the_sampling_factors():
    from emodetect.training.loop import prior_offsets

    labels = np.array([0, 0, 0, 1, 2, 2])
    w = class_weights(labels, n_classes=4)  # balanced: every present class carries the same share of the loss
    pi = np.array([3, 1, 2]) / 6
    want = np.log(pi) - np.log(pi).mean()  # the tilt is uniform / pi, so the offsets are log pi, centred
    np.testing.assert_allclose(prior_offsets(labels, w, None, 4), [*want, 0.0], atol=1e-6)  # float32 weights
    np.testing.assert_allclose(prior_offsets(labels, None, None, 4), 0.0, atol=1e-12)  # no weights: nothing to undo
    got = prior_offsets(labels, None, np.array([1.0, 2.0, 1.0, 1.0]), 4)  # class 1 drawn twice as often
    np.testing.assert_allclose(got[:3] - got[0], [0, -np.log(2), 0], atol=1e-12)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])  # both at once: the tilt is f * w; class 3 is absent, so 0
    got = prior_offsets(labels, w, np.array([2.0, 1.0, 1.0, 1.0]), 4)
    tilt = -np.log([1.0, 2.0, 1.0])
    np.testing.assert_allclose(got, [*(tilt - tilt.mean()), 0.0], atol=1e-12)
    assert not np.signbit(got[3])


def test_prior_correction_moves_the_fitted_logits_by_its_recorded_offsets(tiny_dataset, tmp_path):
    from emodetect.models.predict import predict_logits
    from emodetect.training.loop import prior_offsets

    tr, va = _splits(tiny_dataset)
    tr = tr.subset(~((tr.labels == 0) & (np.arange(len(tr)) % 2 == 0)) & ~((tr.labels == 4) & (np.arange(len(tr)) % 3 > 0)))
    assert len(set(np.bincount(tr.labels).tolist())) > 1  # unbalanced: the class weights tilt the fit
    quiet = dict(progress=False, log=lambda m: None)
    plain, _, plain_info = fit(replace(TINY, epochs=1), tr, va, tmp_path / "plain", **quiet)
    corrected, _, info = fit(replace(TINY, epochs=1, prior_correction=True), tr, va, **quiet)
    offsets = np.array(info["prior_correction"])
    assert "prior_correction" not in plain_info and np.abs(offsets).max() > 0.1  # the tiny set is unbalanced
    np.testing.assert_allclose(offsets, prior_offsets(tr.labels, class_weights(tr.labels), None), atol=1e-6)
    pre = resolve_model_config("tiny").preprocess
    diff = predict_logits(corrected, va.images, pre) - predict_logits(plain, va.images, pre)
    np.testing.assert_allclose(diff, np.broadcast_to(offsets, diff.shape), atol=1e-4)
    # a finished run resumes to take the correction (an after-training option); other changes are still refused
    resumed, _, info2 = fit(replace(TINY, epochs=1, prior_correction=True), tr, va, tmp_path / "plain", resume=True, **quiet)
    np.testing.assert_allclose(predict_logits(resumed, va.images, pre), predict_logits(corrected, va.images, pre), atol=1e-5)
    assert info2["prior_correction"] == info["prior_correction"]
    with pytest.raises(EmodetectError, match="different config"):
        fit(replace(TINY, epochs=1, lr=0.1, prior_correction=True), tr, va, tmp_path / "plain", resume=True, **quiet)


def test_distillation_tilts_a_corrected_teacher_by_the_students_own_class_weights(tiny_dataset, tmp_path):
    from emodetect.models.artifact import load_artifact, save_network
    from emodetect.models.predict import Predictor
    from emodetect.training import loop

    tr, va = _splits(tiny_dataset)
    teacher_model, _, _ = fit(replace(TINY, epochs=1), tr, va, progress=False, log=lambda m: None)
    pre = resolve_model_config("tiny").preprocess
    plain = save_network(tmp_path / "plain.safetensors", teacher_model, "tiny", pre, {"tta_flip": False}, {"width": 8})
    corrected = save_network(tmp_path / "corrected.safetensors", teacher_model, "tiny", pre,
                             {"tta_flip": False, "fit": {"prior_correction": [0.5, -1.0, 0, 0, 0, 0, 0, 0.5]}},
                             {"width": 8})  # fmt: skip
    student = np.array([0.3, -0.2, 0.1, 0.0, 0.0, -0.4, 0.2, 0.0])  # the student's own prior offsets
    served = Predictor(load_artifact(corrected), backend="onnx").logits(tr.images)
    state = torch.get_rng_state()
    soft, _ = loop._teacher(replace(TINY, teacher=str(corrected)), tr, lambda m: None, student)
    assert torch.equal(torch.get_rng_state(), state)  # so a resumed run draws what an uninterrupted one does
    np.testing.assert_allclose(soft.numpy(), served - student.astype(np.float32), atol=1e-4)
    soft, _ = loop._teacher(replace(TINY, teacher=str(plain)), tr, lambda m: None, student)  # uncorrected: as it is
    np.testing.assert_allclose(soft.numpy(), served, atol=1e-4)
    # an ensemble: the mean of its members' soft targets, each shifted as it would be alone
    soft, _ = loop._teacher(replace(TINY, teacher=[str(corrected), str(plain)]), tr, lambda m: None, student)
    np.testing.assert_allclose(soft.numpy(), served - student.astype(np.float32) / 2, atol=1e-4)
    _, online = loop._teacher(replace(TINY, teacher=[str(corrected)], distill_views="augmented"), tr, lambda m: None,
                              student)  # a list of one is one teacher  # fmt: skip
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        raw = online.model(x)
    torch.testing.assert_close(online(x), raw.float() - torch.tensor(student, dtype=torch.float32),
                               atol=0.05 * float(raw.abs().max()), rtol=0)  # fmt: skip


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


# ------------------------------------------------------------------------------ several datasets at once
from emodetect.training.loop import class_masks, masked_cross_entropy  # noqa: E402


def test_masked_cross_entropy_is_cross_entropy_when_nothing_is_masked():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(16, 8, generator=g), torch.randint(0, 8, (16,), generator=g)
    weight = torch.rand(8, generator=g) + 0.5
    for w, eps in ((None, 0.0), (weight, 0.0), (None, 0.1), (weight, 0.1)):
        ref = torch.nn.functional.cross_entropy(logits, target, weight=w, label_smoothing=eps)
        torch.testing.assert_close(masked_cross_entropy(logits, target, torch.ones(16, 8, dtype=torch.bool), w, eps), ref)


def test_a_class_missing_from_a_dataset_gets_no_gradient_from_its_images():
    """FER2013 has no contempt: its faces must not teach the model that contempt never occurs."""
    logits = torch.randn(4, 8, requires_grad=True)
    target = torch.tensor([0, 3, 4, 6])
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[:, 1] = False  # contempt (index 1) is not labelled by this dataset
    loss = masked_cross_entropy(logits, target, mask)
    loss.backward()
    assert torch.all(logits.grad[:, 1] == 0)  # no push down on contempt: no false negatives
    keep = [0, 2, 3, 4, 5, 6, 7]  # the same as a 7-class softmax over the dataset's own classes
    ref = torch.nn.functional.cross_entropy(logits.detach()[:, keep], torch.tensor([0, 2, 3, 5]))
    torch.testing.assert_close(loss.detach(), ref)
    # with smoothing, the smoothed mass goes to the dataset's own classes only
    logits.grad = None
    masked_cross_entropy(logits, target, mask, smoothing=0.2).backward()
    assert torch.all(logits.grad[:, 1] == 0)


def test_class_masks_follow_each_dataset_s_own_classes():
    labels = np.array([0, 1, 2, 0, 2, 3])
    sources = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    m = class_masks(labels, sources, n_classes=4)
    assert m[:3].tolist() == [[True, True, True, False]] * 3 and m[3:].tolist() == [[True, False, True, True]] * 3
    assert class_masks(np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"], dtype=object), n_classes=2) is None
    # a class no dataset labels stays a negative everywhere (masked out, its output would never be trained)
    one = class_masks(np.array([0, 1, 0]), np.array(["fer", "fer", "fer"], dtype=object), n_classes=3)
    assert one is None
    m = class_masks(np.array([0, 1, 0, 2]), np.array(["a", "a", "b", "b"], dtype=object), n_classes=4)
    assert m.tolist() == [[True, True, False, True]] * 2 + [[True, False, True, True]] * 2


def test_training_on_two_datasets_with_different_classes(tmp_path):
    from conftest import make_dataset
    from emodetect.data import load_datasets
    from emodetect.runs import load_splits

    make_dataset(tmp_path / "full", n_per_class=24, seed=1)
    make_dataset(tmp_path / "fer", n_per_class=24, seed=2, classes=("angry", "disgust", "fear", "happy", "neutral",
                                                                    "sad", "surprise"), with_csv=False)  # fmt: skip
    data = [f"full={tmp_path / 'full'}", f"fer={tmp_path / 'fer'}"]
    ds = load_datasets(data, cache_dir=tmp_path / "c", progress=False)
    assert set(ds.sources) == {"full", "fer"} and len(ds) == 24 * 15
    assert ds.info["sources"]["fer"]["split_id"] != ds.info["sources"]["full"]["split_id"]  # each its own split
    from emodetect.config import DataConfig

    _, tr, va, _ = load_splits(data, DataConfig(), "gray", cache_dir=tmp_path / "c", progress=False)
    cfg = resolve_model_config("tiny", {"epochs": 2, "batch_size": 16, "warmup_epochs": 0, "channels_last": False,
                                        "source_weights": {"fer": 0.5}, "format_balance": 4,
                                        "augment_by_source": {"fer": {"jpeg": 0, "lowres": 0}}})  # fmt: skip
    logged = []
    r = fit_network(cfg, tr, va, progress=False, log=logged.append)
    assert "format balance (x4 at most): none" in logged  # the synthetic datasets have one format per class
    assert {"val_accuracy_full", "val_accuracy_fer"} <= set(r.history[-1])
    for bad in ({"source_weights": {"affectnet": 2}}, {"augment_by_source": {"affectnet": {"jpeg": 0}}}):
        with pytest.raises(EmodetectError, match="unknown dataset"):
            fit_network(resolve_model_config("tiny", {"epochs": 1, **bad}), tr, va, progress=False, log=lambda m: None)


def test_the_distillation_loss_equals_a_hand_computation():
    from emodetect.training.loop import distillation_loss

    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0]])
    target = torch.tensor([0])
    alpha, t = 0.6, 2.0
    p_t = np.exp(np.array([1.0, 1.0, 0.0]) / t) / np.exp(np.array([1.0, 1.0, 0.0]) / t).sum()
    p_s = np.exp(np.array([2.0, 0.0, -1.0]) / t) / np.exp(np.array([2.0, 0.0, -1.0]) / t).sum()
    kl = float((p_t * np.log(p_t / p_s)).sum())
    ce = float(-np.log(np.exp(2.0) / np.exp([2.0, 0.0, -1.0]).sum()))
    expected = alpha * t * t * kl + (1 - alpha) * ce
    got = distillation_loss(student, teacher, target, None, None, 0.0, alpha, t)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    mask = torch.tensor([[True, True, False]])  # a class the row's dataset lacks: out of both softmaxes
    s2 = student.clone().requires_grad_(True)
    distillation_loss(s2, teacher, target, mask, None, 0.0, alpha, t).backward()
    assert s2.grad[0, 2] == 0


def test_a_student_distils_from_a_teacher_file(tiny_dataset, tmp_path):
    tr, va = _splits(tiny_dataset)
    _, path = _tiny_model_file(tr, va, tmp_path / "teacher.safetensors", epochs=2)
    logs = []
    student = replace(TINY, epochs=2, teacher=str(path), model_kwargs={"width": 4})
    _, history, _ = fit(student, tr, va, tmp_path / "student", progress=False, log=logs.append)
    assert len(history) == 2 and any("soft targets" in m for m in logs)
    logs.clear()  # the finished run resumed for its correction: no epoch left, so no soft targets are computed
    fit(replace(student, prior_correction=True), tr, va, tmp_path / "student", resume=True, progress=False,
        log=logs.append)  # fmt: skip
    assert any(m.startswith("resumed") for m in logs) and not any("soft targets" in m for m in logs)


def test_a_run_records_which_teacher_file_it_learned_from_and_resumes_only_with_that_one(tiny_dataset, tmp_path):
    import hashlib

    tr, va = _splits(tiny_dataset)
    _, path = _tiny_model_file(tr, va, tmp_path / "teacher.safetensors")
    quiet = {"progress": False, "log": lambda m: None}
    student = replace(TINY, epochs=2, teacher=str(path), init_from=str(path))
    _, _, info = fit(student, tr, va, tmp_path / "student", **quiet)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["teacher_sha256"] == [digest] and info["init_from_sha256"] == digest
    assert "teacher_sha256" not in fit(replace(TINY, epochs=1), tr, va, **quiet)[2]
    _tiny_model_file(tr, va, path, epochs=2)  # the same name now holds another model, as "default" does after a ship
    with pytest.raises(EmodetectError, match="SHA-256 differs"):
        fit(replace(student, prior_correction=True), tr, va, tmp_path / "student", resume=True, **quiet)


def test_an_online_teacher_scores_every_augmented_batch_at_its_own_size(tiny_dataset, tmp_path, monkeypatch):
    from emodetect.training import loop

    tr, va = _splits(tiny_dataset)
    _, path = _tiny_model_file(tr, va, tmp_path / "teacher.safetensors")
    seen, call = [], loop.OnlineTeacher.__call__

    def spy(self, x):
        seen.append(tuple(x.shape))
        return call(self, x)

    monkeypatch.setattr(loop.OnlineTeacher, "__call__", spy)
    logs = []
    student = replace(TINY, epochs=2, teacher=str(path), distill_views="augmented", image_size=24, mixup=0.4,
                      model_kwargs={"width": 4})  # fmt: skip
    _, history, _ = fit(student, tr, va, progress=False, log=logs.append)
    assert len(history) == 2 and any("scores every augmented batch" in m for m in logs)
    assert not any("soft targets for" in m for m in logs)  # nothing computed in advance
    assert seen == [(16, 1, 32, 32)] * (2 * (len(tr) // 16))  # the teacher's size, every batch of both epochs


def test_the_online_teacher_gives_the_networks_logits():
    from emodetect.models.artifact import Artifact
    from emodetect.models.registry import create_model
    from emodetect.training.loop import OnlineTeacher

    torch.manual_seed(0)
    net = create_model("tiny", num_classes=8).eval()
    pre = resolve_model_config("tiny").preprocess
    x = torch.randn(6, 1, 32, 32)
    artifact = Artifact(model=net, meta={"preprocess": pre.to_dict()}, path=None)
    with torch.no_grad():
        want = net(x)
    got = OnlineTeacher(artifact)(x)
    assert got.shape == want.shape and not got.requires_grad
    assert torch.allclose(got, want, atol=0.05 * float(want.abs().max()))  # bfloat16 where the CPU has it


def test_a_cut_network_starts_from_a_model_files_shared_layers_and_keeps_its_own_head(tmp_path):
    from emodetect.models.artifact import load_artifact, save_network
    from emodetect.models.registry import create_model
    from emodetect.training.loop import init_from

    torch.manual_seed(0)
    full = create_model("efficientnet_lite0", num_classes=8, pretrained=False).eval()
    path = save_network(tmp_path / "full.safetensors", full, "efficientnet_lite0",
                        resolve_model_config("efficientnet_lite0").preprocess, {"tta_flip": False}, {})  # fmt: skip
    saved = load_artifact(path).model.state_dict()
    cut = create_model("fastlite", num_classes=8, pretrained=False)
    head_names = ("_conv_head.", "_bn1.", "_fc.")  # fastlite's own 512-wide head and output layer
    before = {k: v.clone() for k, v in cut.state_dict().items()}
    assert not torch.equal(before["_conv_stem.weight"], saved["_conv_stem.weight"])
    n = init_from(cut, str(path))
    ours = cut.state_dict()
    trunk = [k for k in ours if not k.startswith(head_names) and not k.endswith("num_batches_tracked")]
    assert n == len(trunk) + sum(k.endswith("num_batches_tracked") and not k.startswith(head_names) for k in ours)
    assert all(torch.equal(ours[k], saved[k]) for k in trunk)
    # the output bias has the same shape in both (8) but its layer's weight does not: the layer is left whole
    assert ours["_fc.bias"].shape == saved["_fc.bias"].shape
    assert all(torch.equal(ours[k], before[k]) for k in ours if k.startswith(head_names))


def test_training_from_a_model_file_starts_at_its_weights_and_refuses_one_with_nothing_in_common(tiny_dataset, tmp_path):
    from emodetect.models.registry import create_model
    from emodetect.training.loop import init_from

    tr, va = _splits(tiny_dataset)
    source, path = _tiny_model_file(tr, va, tmp_path / "tiny.safetensors")
    logs = []
    model, _, _ = fit(replace(TINY, epochs=1, lr=0.0, weight_decay=0.0, init_from=str(path)), tr, va, progress=False,
                      log=logs.append)  # fmt: skip
    weights = [k for k, _ in source.named_parameters()]
    assert all(torch.equal(model.state_dict()[k], source.state_dict()[k].float()) for k in weights)  # lr 0: as loaded
    assert any(m.startswith("initialised from") for m in logs)
    with pytest.raises(EmodetectError, match="no weight of the same name and shape"):
        init_from(create_model("fastlite", num_classes=8, pretrained=False), str(path))
    with pytest.raises(EmodetectError, match="init_from"):
        TrainConfig(init_from="  ")


def test_format_balance_draws_rare_formats_more_often_and_keeps_each_class_s_share():
    from emodetect.training.loop import _sampling_probabilities, format_factors

    # one dataset: contempt 57 PNG / 2,010 JPEG (the cap binds), surprise 424 PNG / 2,498 JPEG (an equal share
    # is under the cap), anger JPEG only; a second dataset whose contempt is all PNG (one format: untouched)
    labels = np.array([1] * 2067 + [7] * 2922 + [0] * 30 + [1] * 5)
    formats = np.array(["png"] * 57 + ["jpeg"] * 2010 + ["png"] * 424 + ["jpeg"] * 2498 + ["jpeg"] * 35)
    sources = np.array(["a"] * 5019 + ["b"] * 5, dtype=object)
    f = format_factors(labels, sources, formats, cap=8.0)
    assert f[0] == 8.0 and f[57] == pytest.approx((2067 - 8 * 57) / 2010)  # capped: x8, JPEG gives up the rest
    assert f[2067] == pytest.approx(2922 / 2 / 424) and f[2067 + 424] == pytest.approx(2922 / 2 / 2498)  # equal
    assert np.all(f[-35:] == 1.0)  # one format in the class: as before
    for c, s in [(1, "a"), (7, "a"), (0, "a"), (1, "b")]:  # every (dataset, class) keeps its count of draws
        sel = (labels == c) & (sources == s)
        assert f[sel].sum() == pytest.approx(sel.sum())
    # three formats: water-filling from the smallest (cap 2: 2 x 10 = 20, then an equal share of the rest)
    f3 = format_factors(np.zeros(130, int), np.array(["a"] * 130, dtype=object),
                        np.array(["gif"] * 10 + ["png"] * 40 + ["jpeg"] * 80), cap=2.0)  # fmt: skip
    assert (f3[0], f3[10], f3[50]) == pytest.approx((2.0, 55 / 40, 55 / 80))
    # as draw probabilities, with the dataset factors on top; off by default
    p = _sampling_probabilities(labels, sources, {}, {"b": 2.0}, f).numpy()
    w = f * np.where(sources == "b", 2.0, 1.0)
    np.testing.assert_allclose(p, w / w.sum())
    assert _sampling_probabilities(labels, sources, {}, {}) is None


def test_format_balance_is_a_factor_of_at_least_one_or_off():
    assert TrainConfig(format_balance=0).format_balance == 0 and TrainConfig(format_balance=8).format_balance == 8
    for bad in (0.5, -1, "8"):
        with pytest.raises(EmodetectError, match="format_balance"):
            TrainConfig(format_balance=bad)
