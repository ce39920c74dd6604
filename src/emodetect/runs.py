"""Train a model by name into a run directory: data -> fit -> artifact -> evaluation -> files.

A run directory holds the model file, `metrics.json` (val and test), `config.json`, `predictions.csv`
(per-image labels and probabilities, no pixels) and plots.
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from emodetect.config import DataConfig, TrainConfig, merge
from emodetect.data import Dataset, load_dataset
from emodetect.data.split import SPLITS
from emodetect.errors import EmodetectError
from emodetect.evaluation.metrics import classification_metrics
from emodetect.labels import CLASSES
from emodetect.models.artifact import Artifact, load_artifact, save_network, save_pipeline
from emodetect.models.registry import get_spec

MODEL_FILES = ("model.safetensors", "model.skops")


def model_path(run_dir: str | Path) -> Path:
    for name in MODEL_FILES:
        if (Path(run_dir) / name).exists():
            return Path(run_dir) / name
    raise EmodetectError(f"no model file ({' or '.join(MODEL_FILES)}) in {run_dir}")


def limit_per_class(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """At most n images per class (a fixed random choice), for quick runs."""
    if n is None:
        return ds
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(ds), bool)
    for c in np.unique(ds.labels):
        idx = np.nonzero(ds.labels == c)[0]
        keep[rng.choice(idx, min(n, len(idx)), replace=False)] = True
    return ds.subset(keep)


def load_splits(data, data_cfg: DataConfig, mode: str, cache_dir=None, progress: bool = True):
    ds = load_dataset(data, mode=mode, label_source=data_cfg.label_source, relfcs_max=data_cfg.relfcs_max,
                      seed=data_cfg.split_seed, cache_dir=cache_dir, progress=progress)  # fmt: skip
    train, val, test = (ds.subset(s) for s in SPLITS)
    train = limit_per_class(train, data_cfg.limit_per_class, data_cfg.split_seed)
    if data_cfg.limit_per_class is not None:  # quick runs shrink evaluation too, in proportion
        val = limit_per_class(val, max(1, data_cfg.limit_per_class // 8), data_cfg.split_seed)
        test = limit_per_class(test, max(1, data_cfg.limit_per_class // 8), data_cfg.split_seed)
    return ds, train, val, test


def resolve_config(model: str, params: dict | None = None):
    """The full configuration of `model` with `params` applied: a TrainConfig for networks, a dict of
    pipeline parameters for scikit-learn models. Unknown models and options are errors, raised at once."""
    spec = get_spec(model)
    params = dict(params or {})
    if spec.kind == "torch":
        return merge(TrainConfig(model=model), params)
    unknown = set(params) - set(spec.defaults)
    if unknown:
        raise EmodetectError(f"model {model!r} takes no option(s) {sorted(unknown)}; it takes {sorted(spec.defaults)}")
    return {**spec.defaults, **params}


def config_dict(cfg) -> dict:
    """A config as plain JSON types (as it is written to metrics.json), for comparisons."""
    return json.loads(json.dumps(cfg if isinstance(cfg, dict) else asdict(cfg)))


def train(model: str, data, out_dir, *, params: dict | None = None, data_cfg: DataConfig = DataConfig(),
          resume: bool = False, cache_dir=None, progress: bool = True, log=print) -> dict:  # fmt: skip
    """Fit `model` on the stored train split of `data`, evaluate on val and test, write everything to out_dir."""
    spec = get_spec(model)
    out = Path(out_dir)
    cfg = resolve_config(model, params)
    out.mkdir(parents=True, exist_ok=True)
    mode = spec.preprocess.mode
    ds, tr, va, te = load_splits(data, data_cfg, mode, cache_dir, progress)
    log(f"{model}: train {len(tr):,}, val {len(va):,}, test {len(te):,} images ({ds.info['label_source']} labels)")
    meta = {"label_source": ds.info["label_source"], "dataset_id": ds.info["dataset_id"], "source": str(data),
            "fingerprint": ds.info["fingerprint"], "data": asdict(data_cfg)}  # fmt: skip

    t0 = time.perf_counter()
    extra: dict = {}
    if spec.kind == "torch":
        from emodetect.training.loop import fit

        net, history, info = fit(cfg, tr, va, out, resume=resume, progress=progress, log=log)
        extra = {"history": history, "fit": info}
        meta.update(config=asdict(cfg), tta_flip=cfg.tta_flip, fit=info)
        from emodetect.data.transforms import Preprocess

        pre = Preprocess.from_dict(info["preprocess"])
        path = save_network(out / "model.safetensors", net, model, pre, meta, model_kwargs=cfg.model_kwargs)
    else:
        from emodetect.data.transforms import to_model_input
        from emodetect.models.registry import create_model

        pipe = create_model(model, **cfg)
        x = to_model_input(tr.images, spec.preprocess).reshape(len(tr), -1).numpy()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            pipe.fit(x, tr.labels)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log(f"{model}: the solver stopped at its iteration limit before converging (ConvergenceWarning)")
            extra["converged"] = False
        meta.update(config=cfg)
        path = save_pipeline(out / "model.skops", pipe, model, spec.preprocess, meta)
    train_seconds = time.perf_counter() - t0

    artifact = load_artifact(path)  # evaluate what was saved, not what is in memory
    if spec.kind == "torch":
        calib = calibrate(artifact, va)
        artifact.meta["temperature"] = calib["temperature"]
        meta.update(temperature=calib["temperature"])
        path = save_network(path, artifact.model, model, artifact.preprocess, meta, model_kwargs=cfg.model_kwargs)
        extra["calibration"] = calib
    result = evaluate_splits(artifact, {"val": va, "test": te})
    result.update(
        model=model, kind=spec.kind, description=spec.description, label_source=ds.info["label_source"], source=str(data),
        dataset_id=ds.info["dataset_id"], n_train=len(tr), train_seconds=train_seconds,
        model_bytes=os.path.getsize(path), config=config_dict(cfg), data=asdict(data_cfg), fingerprint=ds.info["fingerprint"],
        **extra,
    )  # fmt: skip
    write_run(out, result, artifact, {"val": va, "test": te})
    return result


def calibrate(artifact: Artifact, val: Dataset) -> dict:
    """Temperature scaling on validation logits; ECE and reliability bins before and after."""
    from emodetect.evaluation.calibration import fit_temperature, reliability
    from emodetect.models.predict import Predictor, softmax

    logits = Predictor(artifact).logits(val.images)
    t = fit_temperature(logits, val.labels)
    return {"temperature": t, "before": reliability(softmax(logits), val.labels),
            "after": reliability(softmax(logits, t), val.labels)}  # fmt: skip


def evaluate_splits(artifact: Artifact, splits: dict[str, Dataset], speed_images: int = 512) -> dict:
    """Metrics on each split through the artifact's own preprocessing, plus inference speed."""
    from emodetect.models.predict import Predictor

    predictor = Predictor(artifact)
    result, preds = {}, {}
    for name, ds in splits.items():
        proba = predictor.predict_proba(ds.images)
        preds[name] = proba
        result[name] = classification_metrics(ds.labels, proba.argmax(1))
    images = next(iter(splits.values())).images
    sample = np.resize(images, (speed_images, *images.shape[1:]))  # repeats small splits to a fixed count
    predictor.predict(sample[:64])  # warm-up: first calls allocate and pick kernels
    t0 = time.perf_counter()
    predictor.predict(sample)
    result["inference_images_per_second"] = len(sample) / (time.perf_counter() - t0)
    result["_proba"] = preds
    return result


def write_run(out: Path, result: dict, artifact: Artifact, splits: dict[str, Dataset]) -> None:
    """metrics.json, predictions.csv and plots; the numbers are computed before anything is drawn."""
    from emodetect import plots

    proba = result.pop("_proba")
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "true", "pred", *CLASSES])
        for name, ds in splits.items():
            p = proba[name]
            for path, t, row in zip(ds.paths, ds.labels, p):
                w.writerow([name, path, CLASSES[t], CLASSES[int(row.argmax())], *(f"{v:.5f}" for v in row)])
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
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
        plots.save(plots.curves(result["history"], title=result["model"]), out / "curves.png")
    if result.get("calibration"):
        c = result["calibration"]
        fig = plots.reliability_diagram({"before": c["before"], f"after (T={c['temperature']:.2f})": c["after"]},
                                        title=f"{result['model']}: validation reliability")  # fmt: skip
        plots.save(fig, out / "reliability.png")
