"""The training loop as plain functions (torchvision references style).

`train_one_epoch` and `evaluate_epoch` each return a dict of numbers; `fit` wraps them with the schedule,
early stopping (best weights restored), a checkpoint every epoch, `resume`, and the per-epoch history.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from emodetect.config import Augment, TrainConfig
from emodetect.data.ingest import Dataset
from emodetect.data.transforms import Preprocess, augment_batch, to_uint8_tensor
from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES, label_to_index
from emodetect.models.registry import create_model, get_spec

CHECKPOINT = "checkpoint.pt"


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> torch.Tensor:
    """Balanced weights n / (k * count_c) from the given (train) labels; 0 for a class that is absent."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _loss(logits, target, weight, smoothing):
    return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=smoothing)


def train_one_epoch(model, x_u8: torch.Tensor, y: torch.Tensor, optimizer, scheduler, cfg: TrainConfig,
                    pre: Preprocess, aug: Augment, generator: torch.Generator, weight=None,
                    sample_p: torch.Tensor | None = None, progress: bool = False, desc: str = "train") -> dict:  # fmt: skip
    """One pass over the training images (augmented on the fly); returns mean loss, accuracy and seconds."""
    model.train()
    n = len(y)
    order = (torch.multinomial(sample_p, n, replacement=True, generator=generator) if sample_p is not None
             else torch.randperm(n, generator=generator))  # fmt: skip
    n_batches = n // cfg.batch_size if n >= cfg.batch_size else 1  # drop the ragged last batch (BatchNorm)
    total_loss, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(range(n_batches), desc=desc, leave=False, disable=not progress or None, unit="batch")
    l2 = cfg.weight_decay if cfg.optimizer == "adam" else 0.0
    for b in bar:
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        x = augment_batch(x_u8[idx], pre, aug, generator)
        target = y[idx]
        if use_channels_last(cfg):
            x = x.contiguous(memory_format=torch.channels_last)
        lam, perm = 1.0, None
        if cfg.mixup > 0:
            lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator))).beta(
                cfg.mixup, cfg.mixup))  # fmt: skip
            perm = torch.randperm(len(idx), generator=generator)
            x = lam * x + (1 - lam) * x[perm]
        with _autocast(cfg.bf16):
            logits = model(x)
        loss = _loss(logits, target, weight, cfg.label_smoothing)
        if perm is not None:
            loss = lam * loss + (1 - lam) * _loss(logits, target[perm], weight, cfg.label_smoothing)
        if l2:  # Keras-style L2: added to the loss, on weights only
            loss = loss + l2 / 2 * sum((p.float() ** 2).sum() for p in model.parameters() if p.ndim > 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None and cfg.schedule in ("cosine", "onecycle"):
            scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == target).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    return {"loss": total_loss / seen, "accuracy": correct / seen, "seconds": time.perf_counter() - t0}


@torch.inference_mode()
def evaluate_epoch(model, x_u8: torch.Tensor, y: torch.Tensor, pre: Preprocess, *, batch_size: int = 256,
                   weight=None, bf16: bool = False, tta_flip: bool = False) -> dict:  # fmt: skip
    """Loss, accuracy and macro-F1 on held-out images (eval preprocessing, no augmentation)."""
    from emodetect.models.predict import predict_logits

    model.eval()
    logits = torch.from_numpy(predict_logits(model, x_u8, pre, batch_size=batch_size, tta_flip=tta_flip, bf16=bf16))
    pred = logits.argmax(1)
    f1s = []
    for c in range(logits.shape[1]):
        tp = int(((pred == c) & (y == c)).sum())
        fp, fn = int(((pred == c) & (y != c)).sum()), int(((pred != c) & (y == c)).sum())
        if tp + fn:
            f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {
        "loss": float(_loss(logits, y, weight, 0.0)),
        "accuracy": float((pred == y).float().mean()),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
    }


def _make_optimizer(model, cfg: TrainConfig):
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # no weight decay on biases and BN
    wd = 0.0 if cfg.optimizer == "adam" else cfg.weight_decay
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer in ("adam", "adamw"):
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise EmodetectError(f"unknown optimizer {cfg.optimizer!r}; expected adam, adamw or sgd")


def _make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        def f(step):  # linear warm-up, then cosine to zero
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, f)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=max(0.05, warm / max(1, total)))  # fmt: skip
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    if cfg.schedule == "constant":
        return None
    raise EmodetectError(f"unknown schedule {cfg.schedule!r}; expected cosine, onecycle, plateau or constant")


def resolve_preprocess(cfg: TrainConfig) -> Preprocess:
    pre = get_spec(cfg.model).preprocess
    if cfg.image_size:
        pre = Preprocess(cfg.image_size, pre.mode, pre.mean, pre.std)
    return pre


def _sampling_probabilities(labels: np.ndarray, oversample: dict) -> torch.Tensor | None:
    if not oversample:
        return None
    factors = np.ones(len(CLASSES))
    for name, f in oversample.items():  # TrainConfig has resolved aliases to canonical names
        factors[label_to_index(name)] = float(f)
    p = factors[labels]
    return torch.tensor(p / p.sum(), dtype=torch.float64)


def fit(cfg: TrainConfig, train: Dataset, val: Dataset, out_dir: str | Path | None = None, *,
        resume: bool = False, progress: bool = True, log=print) -> tuple[torch.nn.Module, list[dict], dict]:  # fmt: skip
    """Train `cfg.model` on `train`, early-stop on `val`; returns (model with best weights, history, info).

    With out_dir, a checkpoint is written after every epoch; `resume=True` continues from it and ends with
    the same weights as an uninterrupted run (all random state is in the checkpoint).
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    pre = resolve_preprocess(cfg)
    aug = cfg.augmentation()
    model = create_model(cfg.model, num_classes=len(CLASSES), **cfg.model_kwargs)
    if use_channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    x_train, y_train = to_uint8_tensor(train.images), torch.from_numpy(train.labels)
    x_val, y_val = to_uint8_tensor(val.images), torch.from_numpy(val.labels)
    if len(y_train) == 0 or len(y_val) == 0:
        raise EmodetectError("training needs non-empty train and validation splits")
    weight = class_weights(train.labels) if cfg.class_weights else None
    sample_p = _sampling_probabilities(train.labels, cfg.oversample)
    steps = len(y_train) // cfg.batch_size if len(y_train) >= cfg.batch_size else 1
    optimizer = _make_optimizer(model, cfg)
    scheduler = _make_scheduler(optimizer, cfg, steps)

    history: list[dict] = []
    best = {"score": -math.inf, "epoch": -1, "state": None}
    start_epoch = 0
    ckpt_path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise EmodetectError(f"--resume: no checkpoint at {ckpt_path}")
        ck = read_checkpoint(ckpt_path)
        if ck is None:
            raise EmodetectError(f"--resume: {ckpt_path} is not a readable emodetect checkpoint (truncated or foreign)")
        if ck["config"] != json.loads(json.dumps(asdict(cfg))):
            raise EmodetectError(f"--resume: {ckpt_path} was written with a different config")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        generator.set_state(ck["generator"])
        history, start_epoch = ck["history"], ck["epoch"] + 1
        best = {"score": ck["best_score"], "epoch": ck["best_epoch"], "state": ck["best_state"]}
        log(f"resumed from epoch {ck['epoch'] + 1} ({ckpt_path})")

    stale = len(history) - 1 - best["epoch"] if history else 0
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        tr = train_one_epoch(model, x_train, y_train, optimizer, scheduler, cfg, pre, aug, generator, weight,
                             sample_p, progress, desc=f"epoch {epoch + 1}/{cfg.epochs}")  # fmt: skip
        t0 = time.perf_counter()
        va = evaluate_epoch(model, x_val, y_val, pre, weight=weight, bf16=cfg.bf16)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": tr["loss"],
               "train_accuracy": tr["accuracy"], "val_loss": va["loss"], "val_accuracy": va["accuracy"],
               "val_macro_f1": va["macro_f1"], "seconds": tr["seconds"] + time.perf_counter() - t0}  # fmt: skip
        history.append(row)
        if scheduler is not None and cfg.schedule == "plateau":
            scheduler.step(row[cfg.monitor])
        if row[cfg.monitor] > best["score"]:
            best = {"score": row[cfg.monitor], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            stale = 0
        else:
            stale += 1
        log(f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {tr['loss']:.4f}  acc {tr['accuracy']:.4f}  "
            f"val_loss {va['loss']:.4f}  val_acc {va['accuracy']:.4f}  val_f1 {va['macro_f1']:.4f}  "
            f"{row['seconds']:.0f}s" + ("  *" if stale == 0 else ""))  # fmt: skip
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, generator, history, epoch, best, cfg)
    if stale >= cfg.patience:
        log(f"early stopping: no {cfg.monitor} improvement for {cfg.patience} epochs; best epoch {best['epoch'] + 1}")
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    info = {"best_epoch": best["epoch"] + 1, "best_score": best["score"], "monitor": cfg.monitor,
            "epochs_run": len(history), "stopped_early": stale >= cfg.patience,
            "train_seconds": sum(h["seconds"] for h in history), "preprocess": pre.to_dict()}  # fmt: skip
    return model, history, info


def use_channels_last(cfg: TrainConfig) -> bool:
    """channels_last for training unless the model opts out: mini-Xception's backward pass corrupts memory
    in torch 2.13's CPU kernels in NHWC (double free / segfault in its first Xception module)."""
    return cfg.channels_last and get_spec(cfg.model).channels_last


_CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "torch_rng", "generator", "history", "epoch", "best_score",
                    "best_epoch", "best_state", "config"}  # fmt: skip


def read_checkpoint(path) -> dict | None:
    """A checkpoint written by `fit`, or None when it is truncated, foreign or not a plain-tensor file.

    ``weights_only=True`` refuses any pickled object that is not a tensor or plain data, so no code runs.
    """
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, pickled objects, not a torch file: all mean "not resumable"
        return None
    return ck if isinstance(ck, dict) and _CHECKPOINT_KEYS <= set(ck) else None


def checkpoint_config(path) -> dict | None:
    """The config a checkpoint was written with (None if it cannot be read), to decide whether to resume."""
    ck = read_checkpoint(path)
    return None if ck is None else ck["config"]


def _save_checkpoint(path: Path, model, optimizer, scheduler, generator, history, epoch, best, cfg) -> None:
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "torch_rng": torch.get_rng_state(), "generator": generator.get_state(), "history": history,
        "epoch": epoch, "best_score": best["score"], "best_epoch": best["epoch"], "best_state": best["state"],
        "config": json.loads(json.dumps(asdict(cfg))),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)

