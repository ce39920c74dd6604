"""`emodetect study`: the whole comparison as resumable stages.

data (ingest + audit) -> classical models -> networks -> ensembles -> embeddings -> report.

Every stage writes its results into its own folder under the study directory, and every folder records what
produced it (model, full config, data config, dataset fingerprint). A re-run reuses a folder whose record
matches and redoes the rest, so a killed study continues where it stopped and a changed config re-runs only
the stages it affects. A network stopped in the middle of training resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from emodetect.config import DataConfig
from emodetect.errors import EmodetectError
from emodetect.models.registry import get_spec

# The study's models with its hyperparameters; "full" is the real study, "quick" runs the same code paths on
# 150 train images per class and one or two epochs (CI runs it end to end).
CLASSICAL = ("logreg", "logreg_raw", "random_forest", "mlp", "hog_lbp_svm")
PRESETS: dict[str, dict] = {
    "full": {
        "data": {},
        "models": {
            "logreg": {},
            "logreg_raw": {},
            "random_forest": {},
            "mlp": {},
            "hog_lbp_svm": {},
            # the study's CNN: Adam with L2 in the loss, class weights, augmentation, early stopping
            "cnn_seed": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 25, "patience": 6},
            # transfer learning: FER2013 mini-Xception (gray 64x64) and ImageNet EfficientNet-Lite0 (RGB 96x96)
            "mini_xception": {"epochs": 15, "lr": 2e-3, "weight_decay": 0.01, "label_smoothing": 0.1, "patience": 5},
            # = configs/default_model.json: the shipped model (96x96 faces upsampled to 112, the net's own size)
            "efficientnet_lite0": {"epochs": 16, "lr": 1e-3, "weight_decay": 0.05, "image_size": 112,
                                   "label_smoothing": 0.1, "patience": 6},  # fmt: skip
        },
        "ensembles": {"svm_C": 0.01},
        "embeddings": {"models": ["mlp", "best_network"], "max_images": 2500},
    },
    "quick": {
        "data": {"limit_per_class": 150},
        "models": {
            "logreg": {"pca__n_components": 200},
            "logreg_raw": {"clf__max_iter": 100},
            "random_forest": {"pca__n_components": 200, "clf__n_estimators": 60},
            "mlp": {"pca__n_components": 200},
            "hog_lbp_svm": {},
            "cnn_seed": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 2, "patience": 5},
            "mini_xception": {"epochs": 2, "lr": 2e-3, "weight_decay": 0.01, "label_smoothing": 0.1},
            "efficientnet_lite0": {"epochs": 1, "lr": 1e-3, "weight_decay": 0.05, "image_size": 96,
                                   "label_smoothing": 0.1},  # fmt: skip
        },
        "ensembles": {"svm_C": 0.01},
        "embeddings": {"models": ["mlp", "best_network"], "max_images": 600},
    },
}
# The published notebook's validation accuracies, for the results table.
PUBLISHED = {"random_forest": 0.39, "logreg": 0.47, "mlp": 0.48, "cnn_seed": 0.565}


def resolve_study_config(preset: str = "full", config: dict | None = None) -> dict:
    """The preset with a config file's values on top (`models` entries merge per model; a model set to null
    is dropped). Everything is validated here, before any long work starts."""
    if preset not in PRESETS:
        raise EmodetectError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[preset])
    cfg["preset"] = preset
    for key, value in (config or {}).items():
        if key == "models":
            if not isinstance(value, dict):
                raise EmodetectError("config: 'models' must map model names to their options")
            for name, params in value.items():
                if params is None:
                    cfg["models"].pop(name, None)
                else:
                    cfg["models"][name] = {**cfg["models"].get(name, {}), **params}
        elif key in ("data", "ensembles", "embeddings"):
            if not isinstance(value, dict):
                raise EmodetectError(f"config: {key!r} must be an object")
            cfg[key] = {**cfg[key], **value}
        else:
            raise EmodetectError(f"config: unknown key {key!r}; known: data, models, ensembles, embeddings")
    from emodetect.runs import resolve_config

    DataConfig(**cfg["data"]) if set(cfg["data"]) <= set(asdict(DataConfig())) else _unknown_data(cfg["data"])
    for name, params in cfg["models"].items():
        resolve_config(name, params)  # unknown model or option: EmodetectError naming the choices
    if not cfg["models"]:
        raise EmodetectError("config: no models to run")
    return cfg


def _unknown_data(d: dict):
    raise EmodetectError(f"config: unknown data option(s) {sorted(set(d) - set(asdict(DataConfig())))}")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def run_is_current(run_dir: Path, model: str, params: dict, data_cfg: DataConfig, fingerprint: str) -> bool:
    """Whether run_dir holds a finished run of `model` made with exactly this config on this data."""
    from emodetect.runs import config_dict, resolve_config

    m = _read_json(run_dir / "metrics.json")
    return bool(m) and m.get("model") == model and m.get("config") == config_dict(resolve_config(model, params)) \
        and m.get("data") == asdict(data_cfg) and m.get("fingerprint") == fingerprint  # fmt: skip


def _stage_done(folder: Path, key: str) -> dict | None:
    s = _read_json(folder / "stage.json")
    return s["result"] if s and s.get("key") == key else None


def _stage_write(folder: Path, key: str, result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "stage.json", {"key": key, "result": result})  # written last: marks the stage done


def run_study(data, out_dir, *, preset: str = "full", config: dict | None = None, cache_dir=None,
              log=print) -> dict:  # fmt: skip
    """Run (or continue) the study; returns everything written to `out_dir/metrics.json`."""
    from emodetect.data import load_dataset
    from emodetect.data.audit import write_audit
    from emodetect.data.source import Source, scan

    cfg = resolve_study_config(preset, config)
    scan(Source(data))  # a missing, unreadable or empty dataset fails here, before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = DataConfig(**cfg["data"])
    timings: dict[str, float] = {}
    models = list(cfg["models"])
    n_steps = 1 + len(models) + 3
    step = iter(range(1, n_steps + 1))

    def stage(name: str) -> None:
        log(f"[{next(step)}/{n_steps}] {name}")

    # 1. data: ingest (cached by the data layer) and audit
    stage("data: ingest and audit")
    t = time.perf_counter()
    ds = load_dataset(data, mode="gray", label_source=data_cfg.label_source, relfcs_max=data_cfg.relfcs_max,
                      seed=data_cfg.split_seed, cache_dir=cache_dir, progress=True)  # fmt: skip
    fingerprint = ds.info["fingerprint"]
    key = _key("audit", fingerprint, data_cfg.split_seed, ds.info.get("dataset_id"))
    audit = _stage_done(out / "audit", key)
    if audit is None:
        audit = write_audit(load_dataset(data, mode="gray", seed=data_cfg.split_seed, cache_dir=cache_dir,
                                         progress=False), out / "audit")  # fmt: skip
        _stage_write(out / "audit", key, {"file": "audit.json"})
    else:
        audit = _read_json(out / "audit" / "audit.json")
    timings["data"] = time.perf_counter() - t

    # 2-3. every model, classical first: each run directory is reused when its record matches
    runs: dict[str, dict] = {}
    for name in models:
        kind = get_spec(name).kind
        stage(f"{'classical' if kind == 'sklearn' else 'network'}: {name}")
        runs[name] = _train_stage(name, cfg["models"][name], data, out / "models" / name, data_cfg, fingerprint,
                                  cache_dir, log)  # fmt: skip

    # 4. ensembles
    stage("ensembles")
    ensembles = _ensemble_stage(cfg, runs, data, out / "ensembles", data_cfg, cache_dir, log)

    # 5. embeddings
    stage("embeddings: K-Means, t-SNE, UMAP")
    embeddings = _embedding_stage(cfg, runs, out, cache_dir, log)

    # 6. report
    stage("report")
    from emodetect.analysis.study_report import write_report

    result = {
        "preset": cfg["preset"], "config": cfg, "data": {"source": str(data), "fingerprint": fingerprint,
        "label_source": data_cfg.label_source, "config": asdict(data_cfg)}, "audit": audit,
        "models": {n: _summary(r) for n, r in runs.items()}, "ensembles": ensembles, "embeddings": embeddings,
        "published": PUBLISHED, "environment": environment(),
    }  # fmt: skip
    write_report(result, out, runs, ds)
    _write_json(out / "metrics.json", result)
    log(f"report: {out / 'report.html'} and {out / 'report.md'}")
    return result


def _train_stage(name, params, data, run_dir: Path, data_cfg, fingerprint, cache_dir, log) -> dict:
    from emodetect.runs import config_dict, resolve_config, train
    from emodetect.training.loop import CHECKPOINT, checkpoint_config

    if run_is_current(run_dir, name, params, data_cfg, fingerprint):
        log(f"  {name}: finished earlier, reused ({run_dir})")
        return _read_json(run_dir / "metrics.json")
    resume = False
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        resume = checkpoint_config(ckpt) == config_dict(resolve_config(name, params))
        if not resume:
            ckpt.unlink()  # written by another config: start over
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # a stale or different run: its files must not mix with the new ones
    result = train(name, data, run_dir, params=params, data_cfg=data_cfg, resume=resume, cache_dir=cache_dir,
                   log=lambda m: log(f"  {m}"))  # fmt: skip
    t = result["test"]
    log(f"  {name}: test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f} ({result['train_seconds']:.0f} s)")
    return result


def _summary(r: dict) -> dict:
    keep = ("model", "kind", "description", "val", "test", "n_train", "train_seconds", "inference_images_per_second",
            "model_bytes", "config", "calibration", "history", "fit")  # fmt: skip
    return {k: r[k] for k in keep if k in r}


def best_network(runs: dict[str, dict]) -> str | None:
    """The network with the highest validation accuracy (selection never looks at the test split)."""
    nets = [n for n, r in runs.items() if r.get("kind") == "torch"]
    return max(nets, key=lambda n: runs[n]["val"]["accuracy"]) if nets else None


def _ensemble_stage(cfg, runs, data, folder: Path, data_cfg, cache_dir, log) -> dict:
    from emodetect.analysis import ensembles

    nets = [n for n, r in runs.items() if r.get("kind") == "torch"]
    if not nets:
        return {}
    base = best_network(runs)
    members = {n: _key(runs[n]["config"], runs[n]["fingerprint"], runs[n]["train_seconds"]) for n in runs}
    key = _key("ensembles", cfg["ensembles"], members, asdict(data_cfg))
    done = _stage_done(folder, key)
    if done is not None:
        log("  ensembles: finished earlier, reused")
        return done
    t = time.perf_counter()
    result = {"cnn_svm": ensembles.cnn_svm(folder.parent / "models" / base, data, data_cfg, C=cfg["ensembles"]["svm_C"],
                                           cache_dir=cache_dir)}  # fmt: skip
    if len(nets) > 1:
        result["soft_vote_networks"] = ensembles.soft_vote([folder.parent / "models" / n for n in nets])
    classical_best = max((n for n in runs if runs[n].get("kind") == "sklearn"), key=lambda n: runs[n]["val"]["accuracy"],
                         default=None)  # fmt: skip
    if classical_best is not None:
        result["soft_vote_network_classical"] = ensembles.soft_vote(
            [folder.parent / "models" / base, folder.parent / "models" / classical_best])
    result["seconds"] = time.perf_counter() - t
    for name, r in result.items():
        if isinstance(r, dict) and "test" in r:
            log(f"  {name} ({', '.join(r['members'])}): val accuracy {r['val']['accuracy']:.4f}, "
                f"test accuracy {r['test']['accuracy']:.4f}")  # fmt: skip
    _stage_write(folder, key, result)
    return result


def _embedding_stage(cfg, runs, out: Path, cache_dir, log) -> dict:
    from emodetect.analysis.report import embed_run

    result = {}
    for name in cfg["embeddings"]["models"]:
        name = best_network(runs) if name == "best_network" else name
        if name is None or name not in runs:
            continue
        run_dir = out / "models" / name
        key = _key("embed", runs[name]["config"], runs[name]["train_seconds"], cfg["embeddings"]["max_images"])
        done = _stage_done(run_dir / "embedding", key)
        if done is None:
            r = embed_run(run_dir, cache_dir=cache_dir, max_images=cfg["embeddings"]["max_images"])
            done = {k: v for k, v in r.items() if not isinstance(v, np.ndarray)}
            _stage_write(run_dir / "embedding", key, done)
        else:
            log(f"  {name}: finished earlier, reused")
        log(f"  {name}: K-Means ARI {done['ari']:.3f}, NMI {done['nmi']:.3f}, "
            f"silhouette {done['silhouette_true_labels']:.3f} (true labels)")  # fmt: skip
        result[name] = done
    return result


def environment() -> dict:
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
