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
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emodetect import runs
from emodetect.config import DataConfig
from emodetect.errors import EmodetectError
from emodetect.files import read_json, write_json
from emodetect.models.registry import ModelConfig, resolve_model_config

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
            # AffectNet only, no shortcut augmentations (the first shipped model's recipe; 96x96 faces upsampled
            # to 112, the net's own size); today's default model adds FER2013 and augmentations (configs/)
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


@dataclass
class StudyConfig:
    """The preset with a config file on top (`raw`, recorded in the report) and every model resolved once."""

    raw: dict
    models: dict[str, ModelConfig]
    data: DataConfig


def resolve_study_config(preset: str = "full", config: dict | None = None) -> StudyConfig:
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
                elif not isinstance(params, dict):
                    raise EmodetectError(f"config: the options of model {name!r} must be an object")
                else:
                    cfg["models"][name] = {**cfg["models"].get(name, {}), **params}
        elif key in ("data", "ensembles", "embeddings"):
            if not isinstance(value, dict):
                raise EmodetectError(f"config: {key!r} must be an object")
            cfg[key] = {**cfg[key], **value}
        else:
            raise EmodetectError(f"config: unknown key {key!r}; known: data, models, ensembles, embeddings")
    unknown = set(cfg["data"]) - set(asdict(DataConfig()))
    if unknown:
        raise EmodetectError(f"config: unknown data option(s) {sorted(unknown)}")
    if not cfg["models"]:
        raise EmodetectError("config: no models to run")
    models = {name: resolve_model_config(name, params) for name, params in cfg["models"].items()}
    return StudyConfig(cfg, models, DataConfig(**cfg["data"]))


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_is_current(run_dir: Path, model: ModelConfig, data_cfg: DataConfig, fingerprint: str) -> bool:
    """Whether run_dir holds a finished run of `model` made with exactly this config on this data."""
    m = read_json(run_dir / "metrics.json")
    from emodetect.training.loop import with_defaults

    return isinstance(m, dict) and m.get("model") == model.name and with_defaults(m.get("config")) == model.to_dict() \
        and m.get("data") == asdict(data_cfg) and m.get("fingerprint") == fingerprint  # fmt: skip


def _stage_done(folder: Path, key: str) -> dict | None:
    s = read_json(folder / "stage.json")
    return s["result"] if isinstance(s, dict) and s.get("key") == key else None


def _stage_write(folder: Path, key: str, result: dict) -> None:
    write_json(folder / "stage.json", {"key": key, "result": result})  # written last: marks the stage done


def run_study(data, out_dir, *, preset: str = "full", config: dict | None = None, cache_dir=None,
              eval_data=(), log=print) -> dict:  # fmt: skip
    """Run (or continue) the study; returns everything written to `out_dir/metrics.json`.

    eval_data: other datasets on which every model is also scored as it is (zero-shot), beside the main table.
    """
    from emodetect.analysis.study_report import write_report
    from emodetect.data import load_dataset
    from emodetect.data.audit import write_audit
    from emodetect.data.source import Source, scan

    study = resolve_study_config(preset, config)
    scan(Source(data))  # a missing, unreadable or empty dataset fails here, before anything is written
    from emodetect.data.dataset import parse_sources

    others = parse_sources(eval_data) if eval_data else []
    for other in others:
        scan(Source(other.path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = study.data
    n_steps = 1 + len(study.models) + 3 + bool(others)
    step = iter(range(1, n_steps + 1))

    def stage(name: str) -> None:
        log(f"[{next(step)}/{n_steps}] {name}")

    # 1. data: ingest (cached by the data layer) and audit
    stage("data: ingest and audit")
    ds = load_dataset(data, mode="gray", label_source=data_cfg.label_source, relfcs_max=data_cfg.relfcs_max,
                      seed=data_cfg.split_seed, cache_dir=cache_dir, progress=True)  # fmt: skip
    fingerprint = ds.info["fingerprint"]
    key = _key("audit", fingerprint, data_cfg.split_seed, ds.info.get("dataset_id"))
    if _stage_done(out / "audit", key) is None:  # the audit covers every image: folder labels, no ceiling
        write_audit(load_dataset(data, mode="gray", seed=data_cfg.split_seed, cache_dir=cache_dir, progress=False),
                    out / "audit")  # fmt: skip
        _stage_write(out / "audit", key, {"file": "audit.json"})
    audit = read_json(out / "audit" / "audit.json")

    # 2-3. every model, classical first: each run directory is reused when its record matches
    records: dict[str, dict] = {}
    for name, model in study.models.items():
        stage(f"{'classical' if model.kind == 'sklearn' else 'network'}: {name}")
        records[name] = _train_stage(model, data, out / "models" / name, data_cfg, fingerprint, cache_dir, log)

    # 4. ensembles
    stage("ensembles")
    ensembles = _ensemble_stage(study.raw, records, data, out, data_cfg, cache_dir, log)

    # 5. embeddings
    stage("embeddings: K-Means, t-SNE, UMAP")
    embeddings = _embedding_stage(study.raw, records, out, cache_dir, log)

    # 6. other datasets, zero-shot
    cross = {}
    if others:
        stage(f"zero-shot on {', '.join(o.name for o in others)}")
        cross = _cross_dataset_stage(records, others, out, cache_dir, log)

    # 7. report
    stage("report")
    result = {
        "preset": study.raw["preset"], "config": study.raw, "data": {"source": str(data), "fingerprint": fingerprint,
        "label_source": data_cfg.label_source, "config": asdict(data_cfg)}, "audit": audit,
        "models": {n: _summary(r) for n, r in records.items()}, "ensembles": ensembles, "embeddings": embeddings,
        "cross_dataset": cross, "published": PUBLISHED, "environment": runs.environment(),
    }  # fmt: skip
    write_report(result, out, ds)
    write_json(out / "metrics.json", result)
    log(f"report: {out / 'report.html'} and {out / 'report.md'}")
    return result


def _train_stage(model: ModelConfig, data, run_dir: Path, data_cfg, fingerprint, cache_dir, log) -> dict:
    from emodetect.training.loop import CHECKPOINT, checkpoint_config, resumable

    if run_is_current(run_dir, model, data_cfg, fingerprint):
        log(f"  {model.name}: finished earlier, reused ({run_dir})")
        return read_json(run_dir / "metrics.json")
    ckpt = run_dir / CHECKPOINT  # resumed only when it was written with this config on this very data
    resume = ckpt.exists() and resumable(checkpoint_config(ckpt), model.to_dict()) and \
        read_json(run_dir / runs.DATA_FILE) == runs.data_identity(data_cfg, fingerprint)  # fmt: skip
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a stale or different run: its files must not mix with the new ones
    result = runs.train(model, data, run_dir, data_cfg=data_cfg, resume=resume, cache_dir=cache_dir,
                        log=lambda m: log(f"  {m}"))  # fmt: skip
    t = result["test"]
    log(f"  {model.name}: test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f} ({result['train_seconds']:.0f} s)")
    return result


def _summary(r: dict) -> dict:
    keep = ("model", "kind", "description", "val", "test", "n_train", "train_seconds", "inference_images_per_second",
            "model_bytes", "config", "calibration", "robustness", "history", "fit")  # fmt: skip
    return {k: r[k] for k in keep if k in r}


def best_network(records: dict[str, dict]) -> str | None:
    """The network with the highest validation accuracy (selection never looks at the test split)."""
    nets = [n for n, r in records.items() if r.get("kind") == "torch"]
    return max(nets, key=lambda n: records[n]["val"]["accuracy"]) if nets else None


def _ensemble_stage(cfg: dict, records: dict, data, out: Path, data_cfg, cache_dir, log) -> dict:
    from emodetect.analysis import ensembles
    from emodetect.evaluation.evaluate import split_metrics
    from emodetect.evaluation.predictions import read_predictions
    from emodetect.models.predict import Predictor

    nets = [n for n, r in records.items() if r.get("kind") == "torch"]
    if not nets:
        return {}
    folder, models_dir = out / "ensembles", out / "models"
    base = best_network(records)
    members = {n: _key(records[n]["config"], records[n]["fingerprint"], records[n]["train_seconds"]) for n in records}
    key = _key("ensembles", cfg["ensembles"], members, asdict(data_cfg))
    done = _stage_done(folder, key)
    if done is not None:
        log("  ensembles: finished earlier, reused")
        return done
    t = time.perf_counter()
    # a network with a linear SVM on its own embeddings (fitted on the train split)
    run = runs.load_run(models_dir / base)
    _, tr, va, te = run.load_splits(data, cache_dir)
    predictor = Predictor(run.artifact)
    svm = ensembles.fit_feature_svm(predictor.embed(tr.images), tr.labels, C=cfg["ensembles"]["svm_C"])
    cnn_svm = {"members": [base, f"svm({base} features)"], "svm_C": cfg["ensembles"]["svm_C"]}
    for name, ds in (("val", va), ("test", te)):
        p_net = predictor.predict_proba(ds.images)
        p_svm = ensembles.class_proba(svm, predictor.embed(ds.images))
        cnn_svm[name] = split_metrics(ds, ensembles.soft_vote([p_net, p_svm]))
        cnn_svm[f"svm_{name}"] = split_metrics(ds, p_svm)
        cnn_svm[f"network_{name}"] = split_metrics(ds, p_net)
    result = {"cnn_svm": cnn_svm}
    # soft votes of finished runs, from their stored probabilities
    preds = {n: read_predictions(models_dir / n) for n in records}
    groups = {}
    if len(nets) > 1:
        groups["soft_vote_networks"] = nets
    classical_best = max((n for n in records if records[n].get("kind") == "sklearn"),
                         key=lambda n: records[n]["val"]["accuracy"], default=None)  # fmt: skip
    if classical_best is not None:
        groups["soft_vote_network_classical"] = [base, classical_best]
    for name, member_names in groups.items():
        entry = {"members": member_names}
        for split, ds in (("val", va), ("test", te)):
            first = preds[member_names[0]][split]
            if any(not np.array_equal(preds[m][split]["path"], first["path"]) for m in member_names):
                raise EmodetectError("soft vote: the runs were evaluated on different images")
            entry[split] = split_metrics(ds, ensembles.soft_vote([preds[m][split]["proba"] for m in member_names]))
        result[name] = entry
    result["seconds"] = time.perf_counter() - t
    for name, r in result.items():
        if isinstance(r, dict) and "test" in r:
            log(f"  {name} ({', '.join(r['members'])}): val accuracy {r['val']['accuracy']:.4f}, "
                f"test accuracy {r['test']['accuracy']:.4f}")  # fmt: skip
    _stage_write(folder, key, result)
    return result


def _cross_dataset_stage(records: dict, others, out: Path, cache_dir, log) -> dict:
    """Every model scored on every other dataset as it is: {dataset: {model: metrics}} (no duplicate search)."""
    result: dict[str, dict] = {}
    for other in others:
        result[other.name] = {}
        for name, record in records.items():
            folder = out / "models" / name / "zero-shot" / other.name
            key = _key("zero-shot", record["config"], record["train_seconds"], str(other.path))
            done = _stage_done(folder, key)
            if done is None:
                m = runs.evaluate_model(out / "models" / name, [other], split="all", cache_dir=cache_dir)
                done = {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n_images", "per_class")}
                _stage_write(folder, key, done)
            log(f"  {name} on {other.name}: accuracy {done['accuracy']:.4f}, macro-F1 {done['macro_f1']:.4f}")
            result[other.name][name] = done
    return result


def _embedding_stage(cfg: dict, records: dict, out: Path, cache_dir, log) -> dict:
    result = {}
    for name in cfg["embeddings"]["models"]:
        name = best_network(records) if name == "best_network" else name
        if name is None or name not in records:
            continue
        run_dir = out / "models" / name
        key = _key("embed", records[name]["config"], records[name]["train_seconds"], cfg["embeddings"]["max_images"])
        done = _stage_done(run_dir / "embedding", key)
        if done is None:
            r = runs.embed_run(run_dir, cache_dir=cache_dir, max_images=cfg["embeddings"]["max_images"])
            done = {k: v for k, v in r.items() if not isinstance(v, np.ndarray)}
            _stage_write(run_dir / "embedding", key, done)
        else:
            log(f"  {name}: finished earlier, reused")
        log(f"  {name}: K-Means ARI {done['ari']:.3f}, NMI {done['nmi']:.3f}, "
            f"silhouette {done['silhouette_true_labels']:.3f} (true labels)")  # fmt: skip
        result[name] = done
    return result
