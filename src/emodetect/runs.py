"""Runs: train a model by name into a run folder, and everything that reads a run folder back.

A run folder holds the model file, `metrics.json` (val and test, overall, per source dataset and per file
format), `predictions.csv` (per-image labels and probabilities, no pixels) and plots. Orchestration only:
fitting, evaluating, calibrating and drawing live in the layers below.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emodetect import plots
from emodetect.config import DataConfig, teacher_names
from emodetect.data import Dataset, load_dataset, load_datasets
from emodetect.data.dataset import DataSource, concat, parse_sources
from emodetect.data.source import Source
from emodetect.data.split import SPLITS
from emodetect.errors import EmodetectError
from emodetect.evaluation.calibration import calibrate
from emodetect.evaluation.evaluate import Evaluation, evaluate
from emodetect.evaluation.predictions import write_predictions
from emodetect.evaluation.robustness import robustness
from emodetect.files import atomic_write, read_json, write_json
from emodetect.labels import CLASSES
from emodetect.models.artifact import (
    Artifact,
    describe,
    find_model_file,
    load_artifact,
    resolve_artifact,
    save_network,
    save_pipeline,
)
from emodetect.models.predict import Predictor
from emodetect.models.registry import ModelConfig, resolve_model_config
from emodetect.training import fit_network, fit_pipeline
from emodetect.training.loop import CHECKPOINT

MODEL_FILE = {"torch": "model.safetensors", "sklearn": "model.skops"}


# ------------------------------------------------------------------------------------------------- data


def limit_per_class(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """At most n images per class and source (a fixed random choice), for quick runs."""
    if n is None:
        return ds
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(ds), bool)
    for src in dict.fromkeys(ds.sources.tolist()):
        for c in np.unique(ds.labels):
            idx = np.nonzero((ds.labels == c) & (ds.sources == src))[0]
            if len(idx):
                keep[rng.choice(idx, min(n, len(idx)), replace=False)] = True
    return ds.subset(keep)


def load_splits(data, data_cfg: DataConfig, mode: str, cache_dir=None, progress: bool = True):
    """(all, train, val, test) of one dataset or several (each keeps its own stored split)."""
    ds = load_datasets(data, mode=mode, label_source=data_cfg.label_source, relfcs_max=data_cfg.relfcs_max,
                       seed=data_cfg.split_seed, cache_dir=cache_dir, progress=progress)  # fmt: skip
    train, val, test = (ds.subset(s) for s in SPLITS)
    train = limit_per_class(train, data_cfg.limit_per_class, data_cfg.split_seed)
    if data_cfg.limit_per_class is not None:  # quick runs shrink evaluation too, in proportion
        val = limit_per_class(val, max(1, data_cfg.limit_per_class // 8), data_cfg.split_seed)
        test = limit_per_class(test, max(1, data_cfg.limit_per_class // 8), data_cfg.split_seed)
    if not len(train) or not len(val) or not len(test):
        raise EmodetectError(f"{data}: the stored split leaves an empty train, val or test set "
                             f"({len(train)} / {len(val)} / {len(test)} images)")  # fmt: skip
    return ds, train, val, test


def _data_sources(data) -> list[str]:
    """The datasets as `--data` takes them back (PATH or NAME=PATH)."""
    items = [data] if isinstance(data, (str, Path, DataSource)) else data
    return [f"{d.name}={d.path}" if isinstance(d, DataSource) else str(d) for d in items]


# ------------------------------------------------------------------------------------------------ train


DATA_FILE = "data.json"  # in a run folder: the data its checkpoint is trained on


def data_identity(data_cfg: DataConfig, fingerprint: str) -> dict:
    """What a run's data is, for resuming: the data options and the content of the datasets."""
    return {"data": asdict(data_cfg), "fingerprint": fingerprint}


def train(model: str | ModelConfig, data, out_dir, *, params: dict | None = None, data_cfg: DataConfig = DataConfig(),
          resume: bool = False, cache_dir=None, progress: bool = True, log=print) -> dict:  # fmt: skip
    """Fit a model on the stored train split of `data` (one dataset or several), calibrate it on val, save it
    once, and score the saved file on val and test; returns what it writes to `out_dir/metrics.json`."""
    cfg = model if isinstance(model, ModelConfig) else resolve_model_config(model, params)
    out = Path(out_dir)
    if resume and not (out / CHECKPOINT).is_file():
        raise EmodetectError(f"--resume: no checkpoint at {out / CHECKPOINT}")
    if cfg.kind == "torch":  # the models it learns from, found before minutes of loading rather than after
        models = [("teacher", t) for t in teacher_names(cfg.params.teacher)]
        if cfg.params.init_from:
            models.append(("init_from", cfg.params.init_from))
        for option, name in models:
            try:
                resolve_artifact(name)
            except EmodetectError as exc:
                raise EmodetectError(f"{option} {name!r}: {exc}; train it first or name another model") from None
    ds, tr, va, te = load_splits(data, data_cfg, cfg.preprocess.mode, cache_dir, progress)
    identity = data_identity(data_cfg, ds.info["fingerprint"])
    if resume and read_json(out / DATA_FILE) not in (None, identity):  # (None: a run from before the file existed)
        raise EmodetectError(f"--resume: the checkpoint in {out} was trained on other data or data options "
                             f"({out / DATA_FILE}); train into a new folder")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # an earlier run's checkpoint must never pass for one trained on the data recorded now
        (out / CHECKPOINT).unlink(missing_ok=True)
    write_json(out / DATA_FILE, identity)  # before the first epoch: what a checkpoint here was trained on
    log(f"{cfg.name}: train {len(tr):,}, val {len(va):,}, test {len(te):,} images ({ds.info['label_source']} labels)")
    t0 = time.perf_counter()
    if cfg.kind == "torch":
        fitted = fit_network(cfg, tr, va, out, resume=resume, progress=progress, log=log)
    else:
        fitted = fit_pipeline(cfg, tr, log=log)
    train_seconds = time.perf_counter() - t0
    if cfg.kind == "torch":  # a resumed run: every epoch's time, not only this call's
        train_seconds = max(train_seconds, fitted.info["train_seconds"])

    per_source = ds.info.get("sources") or {ds.info["name"]: ds.info}
    meta = {"label_source": ds.info["label_source"], "dataset_id": ds.info["dataset_id"],
            "source": _data_sources(data), "fingerprint": ds.info["fingerprint"], "data": asdict(data_cfg),
            "datasets": {n: {"path": i["source"], "fingerprint": i["fingerprint"]} for n, i in per_source.items()},
            "config": cfg.to_dict(), "fit": fitted.info, "environment": environment()}  # fmt: skip
    if cfg.kind == "torch":
        meta.update(tta_flip=cfg.params.tta_flip, model_kwargs=cfg.params.model_kwargs, dtype="float32")
    in_memory = Artifact(fitted.model, describe(cfg.kind, cfg.name, cfg.preprocess, meta))
    calib = calibrate(Predictor(in_memory).logits(va.images), va.labels)  # before the one save
    meta["temperature"] = calib["temperature"]
    path = out / MODEL_FILE[cfg.kind]
    if cfg.kind == "torch":
        save_network(path, fitted.model, cfg.name, cfg.preprocess, meta, model_kwargs=cfg.params.model_kwargs)
    else:
        save_pipeline(path, fitted.model, cfg.name, cfg.preprocess, meta)

    artifact = load_artifact(path)  # score what was saved, not what is in memory
    splits = {"val": va, "test": te}
    predictor = Predictor(artifact)
    ev = evaluate(predictor, splits)
    robust = robustness(predictor, te, clean=ev.proba["test"])
    result = {
        "model": cfg.name, "kind": cfg.kind, "description": cfg.spec.description, "label_source": ds.info["label_source"],
        "source": _data_sources(data), "dataset_id": ds.info["dataset_id"], "fingerprint": ds.info["fingerprint"],
        "n_train": len(tr), "n_train_by_source": {s: int((tr.sources == s).sum()) for s in dict.fromkeys(tr.sources.tolist())},
        "train_seconds": train_seconds, "model_bytes": path.stat().st_size, "config": cfg.to_dict(),
        "data": asdict(data_cfg), **ev.metrics, "inference_images_per_second": ev.images_per_second,
        "calibration": calib, "robustness": robust, "history": fitted.history, "fit": fitted.info,
    }  # fmt: skip
    write_run(out, result, ev, splits)
    return result


def write_run(out: Path, result: dict, ev: Evaluation, splits: dict[str, Dataset]) -> None:
    """metrics.json, predictions.csv and plots; the numbers are computed before anything is drawn."""
    write_predictions(out / "predictions.csv", splits, ev.proba)
    write_json(out / "metrics.json", result)
    for name in splits:
        m = result[name]
        fig = plots.confusion_matrix(np.array(m["confusion_matrix"]), m["classes"],
                                     title=f"{result['model']}: {name} (acc {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f})")  # fmt: skip
        plots.save(fig, out / f"confusion_{name}.png")
    names = list(result["test"]["per_class"])
    series = {s: [result[s]["per_class"].get(c, {}).get("f1", np.nan) for c in names] for s in splits}
    plots.save(plots.bars(None, names, series=series, title=f"{result['model']}: per-class F1", ylabel="F1"),
               out / "per_class_f1.png")  # fmt: skip
    if result.get("history"):
        plots.save(plots.curves(result["history"], title=result["model"], best_epoch=(result.get("fit") or {}).get("best_epoch")),
                   out / "curves.png")  # fmt: skip
    c = result["calibration"]
    fig = plots.reliability_diagram({"before": c["before"], f"after (T={c['temperature']:.2f})": c["after"]},
                                    title=f"{result['model']}: validation reliability")  # fmt: skip
    plots.save(fig, out / "reliability.png")


# ------------------------------------------------------------------------------------------ run folders


@dataclass
class Run:
    """A finished run folder: its saved model and its record (metrics.json)."""

    path: Path
    artifact: Artifact
    record: dict

    @property
    def data_config(self) -> DataConfig:
        return DataConfig(**self.artifact.meta.get("data", {}))

    def load_splits(self, data=None, cache_dir=None, progress: bool = False):
        """(all, train, val, test) of the data the run was trained on (or `data`), as it was split then."""
        datasets = self.artifact.meta.get("datasets") or {}
        recorded = [f"{n}={d['path']}" for n, d in datasets.items()] if len(datasets) > 1 else None
        if not data:
            data = recorded or self.artifact.meta.get("source")
            if not data:
                raise EmodetectError(f"{self.path}: the run does not record its dataset; pass --data")
            sources = parse_sources(data)
            missing = [str(s.path) for s in sources if not Path(s.path).exists()]
            if missing:  # recorded as given to `train`: a relative path is relative to where it ran
                raise EmodetectError(f"{self.path}: its dataset {missing[0]} is not found from here; pass --data "
                                     + (f"NAME=PATH for each of {', '.join(datasets)}" if recorded else "PATH"))
        return load_splits(data, self.data_config, self.artifact.preprocess.mode, cache_dir, progress)


def load_run(run_dir) -> Run:
    """The model and record of a run folder written by `train`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EmodetectError(f"run folder not found: {run_dir}")
    artifact = load_artifact(find_model_file(run_dir))
    record = read_json(run_dir / "metrics.json")
    if not isinstance(record, dict):
        raise EmodetectError(f"{run_dir}: no readable metrics.json (an unfinished run?)")
    return Run(run_dir, artifact, record)


def evaluate_model(model, data, *, split: str = "auto", data_cfg: DataConfig = DataConfig(), cache_dir=None,
                   corruptions: bool = False, log=None) -> dict:  # fmt: skip
    """Metrics of a model (shipped name, file or run folder) on one dataset or several scored as one.

    split 'auto' decides dataset by dataset: the stored test split of each one the model was trained on (its
    training images would flatter it), split with the seed it was trained with, and every image of any other;
    no duplicate search is run for a dataset that is only scored whole. `data_cfg.split_seed` None means the
    model's own seed (0 when it records none)."""
    artifact = resolve_artifact(model)
    if split not in ("auto", "all", *SPLITS):
        raise EmodetectError(f"unknown split {split!r}")
    seen = ({artifact.meta.get("fingerprint")}
            | {d.get("fingerprint") for d in (artifact.meta.get("datasets") or {}).values()}) - {None}  # fmt: skip
    seed = data_cfg.split_seed
    if seed is None:
        seed = (artifact.meta.get("data") or {}).get("split_seed", 0)
    parts, chosen = [], {}
    for source in parse_sources(data):
        use = split
        if split == "auto":  # the model's own training data (by content, whatever its name or path now)
            src = Source(source.path)
            try:
                use = "test" if src.fingerprint() in seen else "all"
            finally:
                src.close()
            if use == "test" and log:
                log(f"{source.name} is one of the model's training datasets: scoring its stored test split "
                    f"(split seed {seed}; --split all to override)")  # fmt: skip
        ds = load_dataset(source.path, name=source.name, mode=artifact.preprocess.mode, label_source=data_cfg.label_source,
                          relfcs_max=data_cfg.relfcs_max, seed=seed, cache_dir=cache_dir, progress=log is not None,
                          split=use != "all")  # fmt: skip
        if use != "all":
            ds = ds.subset(use)
            if not len(ds):
                raise EmodetectError(f"the {use} split of {source.path} is empty with these settings")
        parts.append(ds)
        chosen[source.name] = use
    ds = concat(parts)
    split = next(iter(chosen.values())) if len(set(chosen.values())) == 1 else \
        ", ".join(f"{name}: {use}" for name, use in chosen.items())  # fmt: skip
    predictor = Predictor(artifact)
    ev = evaluate(predictor, {"eval": ds}, speed_images=None)
    result = ev.metrics["eval"]
    if corruptions:
        result["robustness"] = robustness(predictor, ds, clean=ev.proba["eval"])
    result.update(model=artifact.name, model_file=str(artifact.path), label_source=data_cfg.label_source, split=split,
                  data=_data_sources(data), model_label_source=artifact.meta.get("label_source"))  # fmt: skip
    return result


def embed_run(run_dir, data=None, split: str = "test", cache_dir=None, max_images: int | None = None) -> dict:
    """K-Means, t-SNE and UMAP of a run's embeddings of one split; numbers and a plot written next to it."""
    from emodetect.analysis.embeddings import analyse

    run = load_run(run_dir)
    ds = run.load_splits(data, cache_dir)[1 + SPLITS.index(split)]
    if len(ds) < 2:
        raise EmodetectError(f"the {split} split has {len(ds)} images with these settings; nothing to embed")
    if max_images is not None and len(ds) > max_images:
        ds = ds.subset(np.random.default_rng(0).choice(len(ds), max_images, replace=False))
    emb = Predictor(run.artifact).embed(ds.images)
    result = analyse(emb, ds.labels)
    numbers = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
    numbers.update(model=run.artifact.name, split=split)
    write_json(run.path / "embeddings.json", numbers)
    fig = plots.scatter({"t-SNE": result["tsne"], "UMAP": result["umap"]},
                        {"true label": ds.labels, "K-Means cluster": result["assignments"]}, CLASSES,
                        title=f"{run.artifact.name}: {split} embeddings (ARI {result['ari']:.3f}, NMI {result['nmi']:.3f})")  # fmt: skip
    plots.save(fig, run.path / "embeddings.png")
    return {**numbers, "tsne": result["tsne"], "umap": result["umap"], "labels": ds.labels}


def environment() -> dict:
    """The machine and libraries a result was produced with (recorded in artifacts, reports and cards)."""
    import os
    import platform

    import torch

    from emodetect.models.artifact import library_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = library_versions()
    for dist in ("scipy", "opencv-python-headless", "matplotlib", "umap-learn", "skops", "safetensors", "tqdm"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return {"versions": versions, "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}  # fmt: skip


def quantize_and_check(artifact, onnx_bytes: bytes, out, data, cache_dir=None, limit: float = 0.005) -> dict:
    """An int8 copy of an exported network, calibrated on 512 train images of `data`; kept at `out` only when its
    validation accuracy is at most `limit` below the fp32 graph's (both measured here, through ONNX Runtime; the
    test split's change is reported beside it, not used to decide)."""
    data_cfg = DataConfig(**artifact.meta.get("data", {}))
    _, tr, va, te = load_splits(data, data_cfg, artifact.preprocess.mode, cache_dir, progress=False)
    return int8_check(artifact, onnx_bytes, out, tr, va, te, limit)


def calibrated_int8(artifact, onnx_bytes: bytes, train: Dataset) -> bytes:
    """The int8 graph of an exported network, calibrated on 512 train images drawn with seed 0 (the draw that
    `ship --int8`, `export --int8` and bench_fast all use)."""
    from emodetect.data.transforms import to_uint8_input
    from emodetect.models.export import quantize_int8

    pick = np.random.default_rng(0).choice(len(train), min(512, len(train)), replace=False)
    return quantize_int8(onnx_bytes, to_uint8_input(train.images[pick], artifact.preprocess))


def int8_check(artifact, onnx_bytes: bytes, out, train: Dataset, val: Dataset, test: Dataset, limit: float = 0.005,
               stamp: bool = False) -> dict:  # fmt: skip
    """`quantize_and_check` on given splits: kept when the validation accuracy falls by at most `limit`; the test
    split's accuracies are measured for the record. With `stamp` the graph records the SHA-256 of the weights it
    was made from (`emodetect ship --int8`): a Predictor beside those weights then runs it (and no other graph)."""
    from emodetect.data.transforms import to_uint8_input
    from emodetect.models.export import onnx_session, weights_sha256, with_onnx_metadata

    quantized = calibrated_int8(artifact, onnx_bytes, train)
    if stamp:
        quantized = with_onnx_metadata(quantized, {"weights_sha256": weights_sha256(artifact.model)})
    sessions = {"fp32": onnx_session(onnx_bytes), "int8": onnx_session(quantized)}

    def accuracies(split: Dataset) -> dict:
        x = to_uint8_input(split.images, artifact.preprocess)
        acc = {}
        for kind, session in sessions.items():
            proba = np.concatenate([session.run(["probabilities"], {"images": x[i : i + 256]})[0] for i in range(0, len(x), 256)])
            acc[kind] = float((proba.argmax(1) == split.labels).mean())
        return acc

    v, t = accuracies(val), accuracies(test)
    kept = v["fp32"] - v["int8"] <= limit
    if kept:  # nothing is written (or overwritten) otherwise
        atomic_write(out, quantized)
    return {"val_fp32_accuracy": v["fp32"], "val_int8_accuracy": v["int8"], "val_change": v["int8"] - v["fp32"],
            "fp32_accuracy": t["fp32"], "int8_accuracy": t["int8"], "change": t["int8"] - t["fp32"], "kept": kept,
            "bytes": len(quantized), "n_images": len(test), "n_val_images": len(val), "limit": limit}  # fmt: skip
