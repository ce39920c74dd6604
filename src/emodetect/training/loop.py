"""The training loop as plain functions (torchvision references style).

`train_one_epoch` and `evaluate_epoch` each return a dict of numbers; `fit_network` wraps them with the
schedule, early stopping (best weights restored), a checkpoint every epoch, `resume`, and the per-epoch
history, and returns a `FitResult`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from tqdm.auto import tqdm

from emodetect.config import Augment, TrainConfig, teacher_names
from emodetect.data.dataset import Dataset
from emodetect.data.transforms import Preprocess, augment_groups, reframe, to_uint8_tensor
from emodetect.errors import EmodetectError
from emodetect.files import atomic_write, is_regular_file
from emodetect.labels import CLASSES, label_to_index
from emodetect.malloc import tune_malloc
from emodetect.models.layers import output_bias
from emodetect.models.predict import predict_logits
from emodetect.models.registry import ModelConfig, create_model

CHECKPOINT = "checkpoint.pt"


@dataclass
class FitResult:
    """A fitted model (network in eval mode with its best weights, or scikit-learn pipeline) and how it went."""

    model: object
    history: list[dict] = field(default_factory=list)  # one row of numbers per epoch (networks)
    info: dict = field(default_factory=dict)  # best epoch, early stopping, seconds, convergence, ...


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> torch.Tensor:
    """Balanced weights n / (k * count_c) from the given (train) labels; 0 for a class that is absent."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                         weight: torch.Tensor | None = None, smoothing: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Cross-entropy in which each row's softmax runs only over the classes its dataset labels.

    mask: (B, K) bool, True where the row's dataset has the class (FER2013 has no contempt: its rows get no
    contempt column). A class a dataset never labels is then neither a target nor a "false" answer for its
    images: its logit gets no gradient from them, so the model does not learn that the class never occurs.
    Label smoothing spreads over the row's own classes. With no mask this is `F.cross_entropy` exactly
    (class weights and smoothing included).
    """
    logits = logits.float()
    if mask is None:
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
    logp = F.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=1)
    logp = torch.where(mask, logp, torch.zeros_like(logp))  # no -inf * 0
    q = (1 - smoothing) * F.one_hot(target, logits.shape[1]) + smoothing * mask / mask.sum(1, keepdim=True)
    w = torch.ones(logits.shape[1]) if weight is None else weight
    return -(q * w * logp).sum() / w[target].sum()



def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                      weight: torch.Tensor | None, smoothing: float, alpha: float, temperature: float) -> torch.Tensor:  # fmt: skip
    """alpha * T^2 * KL(teacher || student, both at temperature T) + (1 - alpha) * cross-entropy on the labels.

    The teacher's soft targets carry what it learned about look-alike emotions; T^2 keeps their gradient on
    the same scale as the labels' (Hinton et al., 2015). A class a row's dataset lacks (mask False) is left
    out of both softmaxes, as in `masked_cross_entropy`.
    """
    hard = masked_cross_entropy(student, target, mask, weight, smoothing)
    s, t = student.float() / temperature, teacher.float() / temperature
    if mask is not None:
        s, t = s.masked_fill(~mask, float("-inf")), t.masked_fill(~mask, float("-inf"))
    p_t = F.softmax(t, dim=1)
    log_ratio = torch.where(p_t > 0, F.log_softmax(t, dim=1) - F.log_softmax(s, dim=1), torch.zeros_like(p_t))
    kl = (p_t * log_ratio).sum(1).mean()
    return alpha * temperature**2 * kl + (1 - alpha) * hard


def train_one_epoch(model, x_u8: torch.Tensor, y: torch.Tensor, optimizer, scheduler, cfg: TrainConfig,
                    pre: Preprocess, aug: Augment | list[Augment], generator: torch.Generator, weight=None,
                    sample_p: torch.Tensor | None = None, progress: bool = False, desc: str = "train",
                    channels_last: bool = False, class_mask: torch.Tensor | None = None,
                    teacher_logits: torch.Tensor | None = None, teacher: OnlineTeacher | None = None,
                    ema: WeightEma | None = None, aug_group: torch.Tensor | None = None) -> dict:  # fmt: skip
    """One pass over the training images (augmented on the fly); returns mean loss, accuracy and seconds.

    `aug` is one augmentation for every image, or a list of them with `aug_group` giving each image's index in it
    (per-dataset settings, `augment_by_source`).

    Distillation: `teacher_logits` are soft targets fixed in advance (one row per training image); a `teacher`
    instead scores each augmented (and mixed) batch at its own input size, and the student gets the same
    pictures resized to its own.
    """
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
        x = augment_groups(x_u8[idx], teacher.pre if teacher is not None else pre,
                           aug if isinstance(aug, list) else [aug], None if aug_group is None else aug_group[idx],
                           generator)  # fmt: skip
        target = y[idx]
        lam, perm = 1.0, None
        if cfg.mixup > 0:
            lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator))).beta(
                cfg.mixup, cfg.mixup))  # fmt: skip
            perm = torch.randperm(len(idx), generator=generator)
            x = lam * x + (1 - lam) * x[perm]
        soft = soft_p = None  # (B, K) soft targets of the images and of their mixing partners
        if teacher is not None:
            soft = soft_p = teacher(x)  # the teacher saw the mixed picture itself: one target for both terms
            x = reframe(x, teacher.pre, pre)
        elif teacher_logits is not None:
            soft = teacher_logits[idx]
            soft_p = soft[perm] if perm is not None else None
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(cfg.bf16):
            logits = model(x)
        mask = class_mask[idx] if class_mask is not None else None  # (B, K)
        loss = _batch_loss(logits, target, mask, soft, weight, cfg)
        if perm is not None:
            mask_p = mask[perm] if mask is not None else None
            loss = lam * loss + (1 - lam) * _batch_loss(logits, target[perm], mask_p, soft_p, weight, cfg)
        if l2:  # Keras-style L2: added to the loss, on weights only
            loss = loss + l2 / 2 * sum((p.float() ** 2).sum() for p in model.parameters() if p.ndim > 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        if scheduler is not None and cfg.schedule in ("cosine", "onecycle"):
            scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == target).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    return {"loss": total_loss / seen, "accuracy": correct / seen, "seconds": time.perf_counter() - t0}


class WeightEma:
    """An exponential moving average of a network's weights and BatchNorm statistics, updated after every
    optimiser step (timm's ModelEmaV3 rule, warm-up included: the decay at update n is min(decay, (1 + n) /
    (10 + n)), so the first updates follow the network closely). `module` is the averaged network, in eval
    mode; integer buffers (BatchNorm's batch counter) are copied, not averaged."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, now in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if avg.is_floating_point():
                avg.lerp_(now.detach(), 1 - d)
            else:
                avg.copy_(now)

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


class OnlineTeacher:
    """A trained network that scores normalised batches for distillation: fused (batch norm folded), in
    bfloat16 where the CPU has native support (twice as fast here, and a soft target needs no more), no
    gradients. `pre` is its own input format."""

    def __init__(self, artifact, shift: torch.Tensor | None = None):
        from emodetect.models.fuse import fuse

        self.pre = artifact.preprocess
        self.model = fuse(artifact.model, self.pre.size, self.pre.channels).eval()
        self.bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        self.shift = shift  # added to the logits (`teacher_shift`)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast(self.bf16):
            logits = self.model(x.contiguous(memory_format=torch.channels_last)).float()
        return logits if self.shift is None else logits + self.shift


def _batch_loss(logits, target, mask, soft, weight, cfg: TrainConfig) -> torch.Tensor:
    if soft is None:
        return masked_cross_entropy(logits, target, mask, weight, cfg.label_smoothing)
    return distillation_loss(logits, soft, target, mask, weight, cfg.label_smoothing, cfg.distill_alpha,
                             cfg.distill_temperature)  # fmt: skip


@torch.inference_mode()
def evaluate_epoch(model, x_u8: torch.Tensor, y: torch.Tensor, pre: Preprocess, *, batch_size: int = 256,
                   weight=None, bf16: bool = False, tta_flip: bool = False, class_mask: torch.Tensor | None = None,
                   sources: np.ndarray | None = None) -> dict:  # fmt: skip
    """Loss, accuracy and macro-F1 on held-out images (eval preprocessing, no augmentation); with `sources`
    and more than one of them, also the accuracy of each (`accuracy_<source>`)."""
    model.eval()
    logits = torch.from_numpy(predict_logits(model, x_u8, pre, batch_size=batch_size, tta_flip=tta_flip, bf16=bf16))
    pred = logits.argmax(1)
    present = np.unique(y.numpy())  # classes of this split: a class nobody has does not count against macro-F1
    out = {
        "loss": float(masked_cross_entropy(logits, y, class_mask, weight, 0.0)),
        "accuracy": float((pred == y).float().mean()),
        "macro_f1": float(f1_score(y.numpy(), pred.numpy(), labels=present, average="macro", zero_division=0)),
    }
    if sources is not None and len(set(sources.tolist())) > 1:
        correct = (pred == y).numpy()
        out.update({f"accuracy_{s}": float(correct[sources == s].mean()) for s in dict.fromkeys(sources.tolist())})
    return out


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


def class_factors(oversample: dict, n_classes: int = len(CLASSES)) -> np.ndarray:
    """Each class's sampling factor (1 unless `oversample` names it)."""
    factors = np.ones(n_classes)
    for name, f in oversample.items():  # TrainConfig has resolved aliases to canonical names
        factors[label_to_index(name)] = float(f)
    return factors


def _dataset_names(option: str, keyed: dict, sources: np.ndarray) -> list[str]:
    """The datasets of `sources` in order of appearance; an `option` keyed by a dataset not among them is an error."""
    names = list(dict.fromkeys(sources.tolist()))
    unknown = set(keyed) - set(names)
    if unknown:
        raise EmodetectError(f"{option} names unknown dataset(s) {sorted(unknown)}; the datasets are {', '.join(names)}")
    return names


def format_factors(labels: np.ndarray, sources: np.ndarray, formats: np.ndarray, cap: float) -> np.ndarray:
    """Each image's sampling factor that balances the file formats within each (dataset, class) group.

    Water-filling, smallest format first: a format gets min(cap * its count, an equal share of what the class
    has left), the largest takes the rest, so the class's total draws stay its count (its share of the epoch,
    and so the prior correction, is unchanged) and a rare format's images are drawn at most `cap` times as often
    as before. AffectNet's 57 PNG contempt faces against 2,010 JPEG ones: x`cap`, the JPEG ones a little less.
    """
    factors = np.ones(len(labels))
    for key in set(zip(sources.tolist(), labels.tolist())):
        in_group = (sources == key[0]) & (labels == key[1])
        names, counts = np.unique(formats[in_group], return_counts=True)
        left, k = float(in_group.sum()), len(names)
        for i in np.argsort(counts, kind="stable"):
            share = min(cap * counts[i], left / k) if k > 1 else left
            factors[in_group & (formats == names[i])] = share / counts[i]
            left, k = left - share, k - 1
    return factors


def _rare_formats(train: Dataset, f: np.ndarray) -> str:
    """The (dataset, class, format) groups `format_factors` `f` draws more often than usual, with their factors."""
    formats = np.asarray(train.manifest["format"])
    groups = {(s, CLASSES[c], m): x for s, c, m, x in zip(train.sources, train.labels, formats, f) if x > 1}
    return ", ".join(f"{s} {c} {m} x{x:.1f}" for (s, c, m), x in sorted(groups.items())) or "none"


def _sampling_probabilities(labels: np.ndarray, sources: np.ndarray, oversample: dict, source_weights: dict,
                            format_f: np.ndarray | None = None) -> torch.Tensor | None:  # fmt: skip
    """Per-image draw probabilities from class, dataset and format factors (`format_factors`; None: every image
    once per epoch)."""
    if not oversample and not source_weights and format_f is None:
        return None
    _dataset_names("source_weights", source_weights, sources)
    p = class_factors(oversample)[labels] * np.array([float(source_weights.get(s, 1.0)) for s in sources])
    if format_f is not None:
        p *= format_f
    return torch.tensor(p / p.sum(), dtype=torch.float64)


def _source_augmentations(cfg: TrainConfig, sources: np.ndarray) -> tuple[Augment | list[Augment], torch.Tensor | None]:
    """The augmentation (no per-dataset settings), or one per dataset and each image's index into that list."""
    if not cfg.augment_by_source:
        return cfg.augmentation(), None
    names = _dataset_names("augment_by_source", cfg.augment_by_source, sources)
    code = {s: i for i, s in enumerate(names)}
    return [cfg.augmentation_for(s) for s in names], torch.tensor([code[s] for s in sources.tolist()])


def prior_offsets(labels: np.ndarray, weight: torch.Tensor | None, factors: np.ndarray | None = None,
                  n_classes: int = len(CLASSES)) -> np.ndarray:  # fmt: skip
    """Offsets that turn a network fitted with class weights (and class sampling factors) into an estimate of
    the posterior under the train split's own class mix (logit adjustment; Menon et al., ICLR 2021).

    A weighted cross-entropy with class c drawn f_c times as often and weighted w_c is minimised by p(y|x) * f_y *
    w_y (normalised); adding -log(f_y * w_y) to the logits undoes that tilt. Centred (a constant offset changes
    nothing); 0 for a class the train split lacks. Per-dataset factors (`source_weights`) are left out: a network
    that can tell the datasets apart (FER2013's small gray faces) keeps each one's class posterior whatever its
    share of the draws, so they are not a class tilt.
    """
    present = np.bincount(labels, minlength=n_classes) > 0
    tilt = np.ones(n_classes) if factors is None else np.asarray(factors, float).copy()
    if weight is not None:
        tilt *= weight.double().numpy()
    out = np.zeros(n_classes)
    out[present] = -np.log(tilt[present])
    out[present] -= out[present].mean()
    return out + 0.0  # no -0.0


def class_masks(labels: np.ndarray, sources: np.ndarray, n_classes: int = len(CLASSES)) -> torch.Tensor | None:
    """(N, K) bool: the classes each row's dataset labels at all, and those no dataset labels (true negatives
    for everyone, as in a plain cross-entropy: masked out everywhere, their outputs would never be trained);
    None when that is every class for every row."""
    table = {s: np.bincount(labels[sources == s], minlength=n_classes) > 0 for s in dict.fromkeys(sources.tolist())}
    nowhere = ~np.logical_or.reduce(list(table.values()))
    table = {s: m | nowhere for s, m in table.items()}
    if all(m.all() for m in table.values()):
        return None
    return torch.from_numpy(np.stack([table[s] for s in sources.tolist()]))


def _data_plan(cfg: TrainConfig, train: Dataset, val: Dataset, log):
    """What the loss and the sampler need from the data: class weights, draw probabilities, each split's masks of
    the classes its dataset lacks, and the prior-correction offsets (rounded as the meta records them)."""
    weight = class_weights(train.labels) if cfg.class_weights else None
    format_f = None
    if cfg.format_balance:
        format_f = format_factors(train.labels, train.sources, np.asarray(train.manifest["format"]), cfg.format_balance)
        log(f"format balance (x{cfg.format_balance:g} at most): {_rare_formats(train, format_f)}")
    sample_p = _sampling_probabilities(train.labels, train.sources, cfg.oversample, cfg.source_weights, format_f)
    # a class is missing from a dataset if none of its train or val images has it
    masks = class_masks(np.concatenate([train.labels, val.labels]), np.concatenate([train.sources, val.sources]))
    mask_train, mask_val = (None, None) if masks is None else (masks[: len(train)], masks[len(train) :])
    offsets = np.round(prior_offsets(train.labels, weight, class_factors(cfg.oversample)), 6)
    return weight, sample_p, mask_train, mask_val, offsets


def _epoch_row(epoch: int, lr: float, tr: dict, va: dict, seconds: float) -> dict:
    """One epoch's line of the history (per-source validation accuracies as val_accuracy_<source>)."""
    return {"epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
            "val_loss": va["loss"], "val_accuracy": va["accuracy"], "val_macro_f1": va["macro_f1"], "seconds": seconds,
            **{f"val_{k}": v for k, v in va.items() if k.startswith("accuracy_")}}  # fmt: skip


def _epoch_line(row: dict, epochs: int, best: bool) -> str:
    per_source = "".join(f"  {k[len('val_accuracy_'):]} {v:.4f}" for k, v in row.items() if k.startswith("val_accuracy_"))
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  val_f1 {row['val_macro_f1']:.4f}"
            f"{per_source}  {row['seconds']:.0f}s" + ("  *" if best else ""))  # fmt: skip


def fit_network(model_cfg: ModelConfig, train: Dataset, val: Dataset, out_dir: str | Path | None = None, *,
                resume: bool = False, progress: bool = True, log=print) -> FitResult:  # fmt: skip
    """Train the network `model_cfg` names on `train`, early-stop on `val`; the model has its best weights.

    With out_dir, a checkpoint is written after every epoch; `resume=True` continues from it and ends with
    the same weights as an uninterrupted run (all random state is in the checkpoint).
    """
    cfg: TrainConfig = model_cfg.params
    channels_last = model_cfg.channels_last
    tune_malloc()  # 5x faster training steps on glibc (see emodetect.malloc)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    pre = model_cfg.preprocess
    aug, aug_group = _source_augmentations(cfg, train.sources)
    model = create_model(cfg.model, num_classes=len(CLASSES), **cfg.model_kwargs)
    used = models_used(cfg)  # which files the teacher and init_from names meant: the record keeps their digests
    if cfg.init_from and not resume:  # a resumed run's weights come from its checkpoint
        log(f"initialised from {cfg.init_from}: {init_from(model, cfg.init_from)} weights")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x_train, y_train = to_uint8_tensor(train.images), torch.from_numpy(train.labels)
    x_val, y_val = to_uint8_tensor(val.images), torch.from_numpy(val.labels)
    if len(y_train) == 0 or len(y_val) == 0:
        raise EmodetectError("training needs non-empty train and validation splits")
    weight, sample_p, mask_train, mask_val, offsets = _data_plan(cfg, train, val, log)
    steps = len(y_train) // cfg.batch_size if len(y_train) >= cfg.batch_size else 1
    optimizer = _make_optimizer(model, cfg)
    scheduler = _make_scheduler(optimizer, cfg, steps)
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None

    history: list[dict] = []
    best = {"score": -math.inf, "epoch": -1, "state": None}
    start_epoch = 0
    ckpt_path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if resume:
        history, start_epoch, best = _resume(ckpt_path, cfg, model, optimizer, scheduler, generator, ema, used)
        log(f"resumed from epoch {start_epoch} ({ckpt_path})")

    stale = len(history) - 1 - best["epoch"] if history else 0
    teacher_logits, teacher = None, None
    if start_epoch < cfg.epochs and stale < cfg.patience:  # a finished run resumed (for a new patience or the
        teacher_logits, teacher = _teacher(cfg, train, log, offsets)  # correction) needs no soft targets
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        tr = train_one_epoch(model, x_train, y_train, optimizer, scheduler, cfg, pre, aug, generator, weight,
                             sample_p, progress, desc=f"epoch {epoch + 1}/{cfg.epochs}", channels_last=channels_last,
                             class_mask=mask_train, teacher_logits=teacher_logits, teacher=teacher,
                             ema=ema, aug_group=aug_group)  # fmt: skip
        t0 = time.perf_counter()
        kept = model if ema is None else ema.module  # the weights that are evaluated, early-stopped and kept
        va = evaluate_epoch(kept, x_val, y_val, pre, weight=weight, bf16=cfg.bf16, tta_flip=cfg.tta_flip,
                            class_mask=mask_val, sources=val.sources)  # fmt: skip
        if ema is not None:  # the network's own weights too, for the record: what the average adds
            va["accuracy_unaveraged"] = evaluate_epoch(model, x_val, y_val, pre, bf16=cfg.bf16, tta_flip=cfg.tta_flip,
                                                       class_mask=mask_val)["accuracy"]  # fmt: skip
        row = _epoch_row(epoch, optimizer.param_groups[0]["lr"], tr, va, tr["seconds"] + time.perf_counter() - t0)
        history.append(row)
        if scheduler is not None and cfg.schedule == "plateau":
            scheduler.step(row[cfg.monitor])
        if row[cfg.monitor] > best["score"]:
            best = {"score": row[cfg.monitor], "epoch": epoch, "state": copy.deepcopy(kept.state_dict())}
            stale = 0
        else:
            stale += 1
        log(_epoch_line(row, cfg.epochs, best=stale == 0))
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, generator, history, epoch, best, cfg, ema, used)
    stopped_early = stale >= cfg.patience and len(history) < cfg.epochs  # (patience reached at the last epoch: a full run)
    if stopped_early:
        log(f"early stopping: no {cfg.monitor} improvement for {cfg.patience} epochs; best epoch {best['epoch'] + 1}")
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    info = {"best_epoch": best["epoch"] + 1, "best_score": best["score"], "monitor": cfg.monitor,
            "epochs_run": len(history), "stopped_early": stopped_early,
            "train_seconds": sum(h["seconds"] for h in history), **used}  # fmt: skip
    if cfg.prior_correction and offsets.any():  # after early stopping: epochs were chosen on the fitted scores
        bias = output_bias(model)
        with torch.no_grad():
            bias.add_(torch.from_numpy(offsets).to(bias.dtype))
        info["prior_correction"] = offsets.tolist()
        log("prior correction: output bias " + ", ".join(f"{c} {v:+.3f}" for c, v in zip(CLASSES, offsets)))
    return FitResult(model, history, info)


def init_from(model: torch.nn.Module, source: str) -> int:
    """Copy into `model` the layers of the model `source` names whose every weight (and BatchNorm statistic) has
    the same name and shape in `model`: a layer is taken whole or not at all (a new head's bias is not taken from
    an output layer of another width). Returns the number of tensors copied; none is an error."""
    from emodetect.models.artifact import resolve_artifact

    artifact = resolve_artifact(source)
    if artifact.kind != "torch":
        raise EmodetectError(f"init_from: {source} is not a network")
    theirs = artifact.model.state_dict()
    ours = model.state_dict()
    layers: dict[str, list[str]] = {}
    for k in ours:
        layers.setdefault(k.rpartition(".")[0], []).append(k)
    shared = {k: theirs[k] for keys in layers.values()
              if all(k in theirs and theirs[k].shape == ours[k].shape for k in keys) for k in keys}  # fmt: skip
    if not shared:
        raise EmodetectError(f"init_from: {source} ({artifact.name}) has no weight of the same name and shape as {type(model).__name__}'s")
    with torch.no_grad():
        for k, v in shared.items():
            ours[k].copy_(v)
    return len(shared)


def models_used(cfg: TrainConfig) -> dict:
    """The SHA-256 of each teacher's model file (in the config's order) and of init_from's: a shipped name such as
    "default" names another file once a new model ships, so the record says which one this run learned from."""
    from emodetect.models.artifact import model_sha256

    used = {"teacher_sha256": [model_sha256(t) for t in teacher_names(cfg.teacher)]} if cfg.teacher else {}
    if cfg.init_from:
        used["init_from_sha256"] = model_sha256(cfg.init_from)
    return used


def _teacher(cfg: TrainConfig, train: Dataset, log,
             offsets: np.ndarray | None = None) -> tuple[torch.Tensor | None, OnlineTeacher | None]:  # fmt: skip
    """Distillation's soft targets: (the teacher's logits on the clean train images, computed once, None) or
    (None, the teacher itself, to score every augmented batch); (None, None) without a teacher. `offsets`: the
    student's own prior offsets (see `teacher_shift`). It leaves torch's global random state as it found it
    (building a network draws from it): a resumed run then draws what an uninterrupted one does."""
    if not cfg.teacher:
        return None, None
    with torch.random.fork_rng(devices=[]):
        return _make_teacher(cfg, train, log, offsets)


def _make_teacher(cfg: TrainConfig, train: Dataset, log, offsets) -> tuple[torch.Tensor | None, OnlineTeacher | None]:
    from emodetect.models.artifact import resolve_artifact
    from emodetect.models.predict import Predictor

    names = teacher_names(cfg.teacher)
    if cfg.distill_views == "augmented":  # one teacher (a list of one is allowed; the config refuses more)
        artifact = resolve_artifact(names[0])
        log(f"distillation: {artifact.name} scores every augmented batch ({artifact.preprocess.size} px)")
        return None, OnlineTeacher(artifact, teacher_shift(artifact, offsets))
    t0, logits = time.perf_counter(), 0
    for name in names:  # an ensemble's soft targets: the mean of its members' logits, each shifted as one teacher's
        artifact = resolve_artifact(name)
        teacher = Predictor(artifact, backend="onnx")  # float weights, never a shipped int8 graph: targets stay exact
        member = torch.from_numpy(teacher.logits(train.images)).float()
        shift = teacher_shift(artifact, offsets)
        logits = logits + (member if shift is None else member + shift) / len(names)
    log(f"distillation: {', '.join(names)} soft targets for {len(logits):,} images ({time.perf_counter() - t0:.0f} s)")
    return logits, None


def teacher_shift(artifact, offsets: np.ndarray | None) -> torch.Tensor | None:
    """What to add to a teacher's logits for soft targets (None: nothing). A prior-corrected teacher (its model
    file records the correction) predicts under the training mix; the student's own loss is tilted by its class
    weights, so its soft targets are tilted the same way (minus the student's offsets) and the student's own
    correction at the end undoes both. With the same data and weights this gives the teacher's fitted scores."""
    if artifact.meta.get("fit", {}).get("prior_correction") is None:
        return None
    return -torch.tensor(np.zeros(len(CLASSES)) if offsets is None else offsets, dtype=torch.float32)


# options a resumed run may change: they decide when to stop, or act once the epochs are over, so the epochs
# already run are exactly those a run with the new value would have run (checked for patience: more patience
# continues a stopped run; less is refused where the run would have stopped earlier)
RESUMABLE = ("patience", "prior_correction")


def with_defaults(config):
    """A saved training config with the options added since it was written at their defaults (the behaviour
    it was trained with); anything that is not a network's training config comes back as it is."""
    names = {f.name for f in fields(TrainConfig)}
    if not isinstance(config, dict) or "model" not in config or not set(config) <= names:
        return config
    return {**json.loads(json.dumps(asdict(TrainConfig(model=str(config["model"]))))), **config}


def resumable(saved, config: dict) -> bool:
    """Whether a checkpoint written with `saved` may go on as a run of `config` (see RESUMABLE)."""
    saved = with_defaults(saved)
    if not isinstance(saved, dict):
        return False
    return {k: v for k, v in saved.items() if k not in RESUMABLE} == \
        {k: v for k, v in config.items() if k not in RESUMABLE}  # fmt: skip


def _stop_epoch(history: list[dict], monitor: str, patience: int) -> int | None:
    """The epoch (1-based) after which a run with this history and patience would have stopped, if any."""
    best, stale = -math.inf, 0
    for i, row in enumerate(history):
        if stale >= patience:
            return i
        if row[monitor] > best:
            best, stale = row[monitor], 0
        else:
            stale += 1
    return None


def _resume(ckpt_path: Path | None, cfg: TrainConfig, model, optimizer, scheduler, generator, ema=None, used=None):
    """Restore everything a checkpoint holds; returns (history, first epoch to run, best so far). `used`: this
    run's `models_used`, which must be the checkpoint's (a checkpoint from before they were recorded has none)."""
    if ckpt_path is None or not ckpt_path.exists():
        raise EmodetectError(f"--resume: no checkpoint at {ckpt_path}")
    ck = read_checkpoint(ckpt_path)
    if ck is None:
        raise EmodetectError(f"--resume: {ckpt_path} is not a readable emodetect checkpoint (truncated or foreign)")
    if not resumable(ck["config"], json.loads(json.dumps(asdict(cfg)))):
        raise EmodetectError(f"--resume: {ckpt_path} was written with a different config")
    if ck.get("models_used") is not None and ck["models_used"] != (used or {}):
        raise EmodetectError(f"--resume: the teacher or init_from model file is not the one {ckpt_path} was trained "
                             f"with (its SHA-256 differs): the run would learn from two models")  # fmt: skip
    stop = _stop_epoch(list(ck["history"]), cfg.monitor, cfg.patience)
    if stop is not None and stop < len(ck["history"]):
        raise EmodetectError(f"--resume: with patience {cfg.patience} this run would have stopped after epoch {stop}, "
                             f"and {ckpt_path} no longer holds its weights from then")  # fmt: skip
    try:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ck["scheduler"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        torch.set_rng_state(ck["torch_rng"])
        generator.set_state(ck["generator"])
        history, epoch, best_epoch = list(ck["history"]), int(ck["epoch"]), int(ck["best_epoch"])
        best_state = ck["best_state"]
        if best_state is not None and set(best_state) != set(model.state_dict()):
            raise ValueError("its best weights do not fit the model")
        best = {"score": float(ck["best_score"]), "epoch": best_epoch, "state": best_state}
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise EmodetectError(f"--resume: {ckpt_path} does not fit this run ({type(exc).__name__}: {exc})"[:300]) from None
    return history, epoch + 1, best


_CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "torch_rng", "generator", "history", "epoch", "best_score",
                    "best_epoch", "best_state", "config"}  # fmt: skip


def read_checkpoint(path) -> dict | None:
    """A checkpoint written by `fit`, or None when it is truncated, foreign or not a plain-tensor file.

    ``weights_only=True`` refuses any pickled object that is not a tensor or plain data, so no code runs.
    """
    if not is_regular_file(path):  # a pipe or a device in its place is never read
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own notes on a refused pickle: the caller says it plainly
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, pickled objects, not a torch file: all mean "not resumable"
        return None
    return ck if isinstance(ck, dict) and _CHECKPOINT_KEYS <= set(ck) else None


def checkpoint_config(path) -> dict | None:
    """The config a checkpoint was written with (None if it cannot be read), to decide whether to resume."""
    ck = read_checkpoint(path)
    return None if ck is None else ck["config"]


def _save_checkpoint(path: Path, model, optimizer, scheduler, generator, history, epoch, best, cfg,
                     ema: WeightEma | None = None, used: dict | None = None) -> None:  # fmt: skip
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "torch_rng": torch.get_rng_state(), "generator": generator.get_state(), "history": history,
        "epoch": epoch, "best_score": best["score"], "best_epoch": best["epoch"], "best_state": best["state"],
        "config": json.loads(json.dumps(asdict(cfg))), "ema": ema.state_dict() if ema is not None else None,
        "models_used": used or {},
    }  # fmt: skip
    atomic_write(path, lambda f: torch.save(state, f))

