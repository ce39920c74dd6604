"""`emodetect ship RUN_DIR`: turn a finished network run into a model that ships with the package.

Writes `weights/<name>.safetensors` (float16 weights, the run's description and temperature) and its model
card; with `int8`, also `weights/<name>.int8.onnx`, a statically quantised graph of those weights that
`Predictor` prefers when onnxruntime is installed, kept only when it loses at most 0.5 points of validation
accuracy (the test split's change is reported, never used to choose). Every number in the card is measured on
the shipped files themselves, as `load_model` runs them, on the stored test split of the data the run was
trained on, and every sentence is derived from the file's metadata, the registry and the machine the run
recorded, never written for one particular model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PureWindowsPath

import numpy as np
from scipy.special import softmax

from emodetect.config import teacher_names
from emodetect.data.known import describe_dataset
from emodetect.errors import EmodetectError
from emodetect.evaluation.calibration import reliability
from emodetect.evaluation.evaluate import split_metrics
from emodetect.evaluation.metrics import most_confused_pairs
from emodetect.evaluation.robustness import robustness
from emodetect.files import atomic_write
from emodetect.labels import CLASSES
from emodetect.models.artifact import RUN_MODEL_FILES, SHIPPED_MODELS, load_artifact, save_network
from emodetect.models.export import export_onnx, int8_path, onnx_metadata, with_onnx_metadata
from emodetect.models.predict import Predictor
from emodetect.models.registry import get_spec
from emodetect.runs import int8_check, load_run

MAX_BYTES = {"default": 25_000_000, "fast": 5_000_000}
WEIGHTS_DIR = Path(__file__).parent / "weights"
_NOT_COPIED = ("format_version", "kind", "model", "classes", "preprocess", "versions", "model_kwargs", "dtype")


def card_file(name: str) -> str:
    return "MODEL_CARD.md" if name == "default" else f"MODEL_CARD-{name}.md"


def ship(run_dir, dest_dir=WEIGHTS_DIR, *, name: str = "default", data=None, cache_dir=None, command: str = "",
         int8: bool = False, log=print) -> dict:  # fmt: skip
    """Write the run's network as `dest_dir/<name>.safetensors` (float16) with its model card (and, with `int8`,
    its int8 graph when that keeps the accuracy); returns the card."""
    if name not in SHIPPED_MODELS:
        raise EmodetectError(f"unknown shipped model name {name!r}; choose from {', '.join(SHIPPED_MODELS)}")
    run = load_run(run_dir)
    src = run.artifact
    if src.kind != "torch":
        raise EmodetectError(f"{run_dir}: only networks ship (this run is a {src.kind} model)")
    missing = [k for k in ("val", "test", "config", "n_train", "train_seconds") if k not in run.record]
    if missing:
        raise EmodetectError(f"{run_dir}/metrics.json lacks {', '.join(missing)}: not a finished run")
    dest = Path(dest_dir)
    if dest.exists() and not dest.is_dir():
        raise EmodetectError(f"--dest {dest} is a file; give a folder")
    _, train, val, test = run.load_splits(data, cache_dir)  # everything is checked before anything is written
    meta = without_machine_paths({k: v for k, v in src.meta.items() if k not in _NOT_COPIED})
    with tempfile.TemporaryDirectory() as tmp:  # the shipped files change only when all of them are ready
        staged = save_network(Path(tmp) / SHIPPED_MODELS[name], src.model, src.name, src.preprocess, meta,
                              model_kwargs=src.meta.get("model_kwargs"), half=True)  # fmt: skip
        size = staged.stat().st_size
        if size > MAX_BYTES[name]:
            raise EmodetectError(f"{run_dir}: {size / 1e6:.1f} MB in float16, over the {MAX_BYTES[name] / 1e6:.0f} MB "
                                 f"limit for the {name} model")  # fmt: skip
        shipped = load_artifact(staged)
        quant = None
        if int8:  # written beside the staged file, where Predictor(shipped) finds it when it is kept
            quant = int8_check(shipped, export_onnx(shipped), int8_path(staged), train, val, test, stamp=True)
            log(f"int8 graph: validation accuracy {quant['val_int8_accuracy']:.4f} against {quant['val_fp32_accuracy']:.4f} "
                f"(float16 weights in ONNX Runtime; test {quant['int8_accuracy']:.4f} against {quant['fp32_accuracy']:.4f}): "
                + ("kept" if quant["kept"] else "not kept, it loses more than 0.5 points on validation"))  # fmt: skip
        fp32_pred = Predictor(src, backend="onnx").predict(test.images)  # the run's float32 weights, never int8
        card = card_numbers(shipped, run.record, test, fp32_pred, size, command, name, quant)
        meta["card"] = card_summary(card)  # the key numbers travel with the weights (and into ONNX exports)
        staged = save_network(staged, src.model, src.name, src.preprocess, meta, model_kwargs=src.meta.get("model_kwargs"),
                              half=True)  # fmt: skip
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / SHIPPED_MODELS[name]
        if quant and quant["kept"]:  # first: beside the earlier weights its digest keeps it unused; the card in it is
            update = {"card": onnx_metadata(load_artifact(staged))["card"],  # the final one, measured on this graph
                      "quantization": "int8 static (QDQ), per channel; the card's accuracy figures are this graph's"}
            atomic_write(int8_path(target), with_onnx_metadata(int8_path(staged).read_bytes(), update))
        elif int8_path(target).exists():  # a graph of earlier weights: Predictor would ignore it; it does not stay
            int8_path(target).unlink()
        atomic_write(dest / card_file(name), model_card(card))
        path = atomic_write(target, staged.read_bytes())
    m = card["test"]
    log(f"shipped {shipped.name} as {name!r} ({size / 1e6:.2f} MB float16): test accuracy {m['accuracy']:.4f}, "
        f"macro-F1 {m['macro_f1']:.4f}; {path}")  # fmt: skip
    return card


def without_machine_paths(meta: dict) -> dict:
    """The run's description with dataset paths cut to their file names: a shipped file does not record where
    its maker kept the data (datasets are recognised by their fingerprints)."""

    def name_only(item: str) -> str:
        name, sep, path = str(item).rpartition("=")
        return f"{name}{sep}{PureWindowsPath(path).name}"  # splits on / and \ alike

    out = dict(meta)
    if isinstance(out.get("config"), dict):
        out["config"] = config_without_machine_paths(out["config"])
    if isinstance(out.get("source"), (list, tuple)):
        out["source"] = [name_only(s) for s in out["source"]]
    elif isinstance(out.get("source"), str):
        out["source"] = name_only(out["source"])
    if isinstance(out.get("datasets"), dict):
        out["datasets"] = {n: {**d, "path": PureWindowsPath(str(d.get("path", ""))).name} for n, d in out["datasets"].items()}
    return out


def config_without_machine_paths(cfg: dict) -> dict:
    """A training config with its teacher and init_from models named by their file or folder name (a shipped name
    stays as it is): the card and the shipped file do not record where their maker kept other runs."""

    def name(ref):
        if not isinstance(ref, str) or ref in SHIPPED_MODELS:
            return ref
        path = PureWindowsPath(ref)  # splits on / and \ alike, wherever the run was made
        if path.name in RUN_MODEL_FILES and path.parent.name:  # a run's model file: the run names it
            return f"{path.parent.name}/{path.name}"
        return path.name or ref

    out = dict(cfg)
    if isinstance(out.get("teacher"), list):
        out["teacher"] = [name(t) for t in out["teacher"]]
    elif out.get("teacher"):
        out["teacher"] = name(out["teacher"])
    if out.get("init_from"):
        out["init_from"] = name(out["init_from"])
    return out


def card_summary(card: dict) -> dict:
    """The card's key numbers, as the shipped file records them."""
    m = card["test"]
    out = {"test_accuracy": round(m["accuracy"], 4), "test_balanced_accuracy": round(m["balanced_accuracy"], 4),
           "test_macro_f1": round(m["macro_f1"], 4), "test_images": m["n_images"]}  # fmt: skip
    for src, v in m.get("by_source", {}).items():
        out[f"test_accuracy_{src}"] = round(v["accuracy"], 4)
    for fmt, v in m.get("by_format", {}).items():
        out[f"test_accuracy_{fmt}"] = round(v["accuracy"], 4)
    return out


def card_numbers(shipped, record: dict, test, fp32_pred: np.ndarray, size: int, command: str, name: str,
                 int8: dict | None = None) -> dict:  # fmt: skip
    """Everything the card states, measured on the shipped file (as `load_model` runs it: through its int8 graph
    when one is kept) or read from its metadata and run record. The robustness table too is measured here, with
    the corruptions as they are now, not copied from the run's record."""
    predictor = Predictor(shipped)
    logits = predictor.logits(test.images)  # one pass: raw and calibrated probabilities from it
    proba = softmax(logits / shipped.temperature, axis=1)
    metrics = split_metrics(test, proba)
    spec = get_spec(shipped.name)
    meta = shipped.meta
    datasets = meta.get("datasets") or {"data": {"path": meta.get("source"), "fingerprint": meta.get("fingerprint")}}
    return {
        "name": name, "model": shipped.name, "bytes": size, "description": spec.description,
        "pretrained": spec.pretrained, "pretrained_licence": spec.licence, "preprocess": meta["preprocess"],
        "tta_flip": bool(meta.get("tta_flip")), "temperature": shipped.temperature, "test": metrics,
        "backend": predictor.backend, "int8": int8,
        "val_fp32": record["val"], "test_fp32": record["test"],
        "agreement_with_fp32": float((fp32_pred == proba.argmax(1)).mean()),
        "ece_test_before": reliability(softmax(logits, axis=1), test.labels)["ece"],
        "ece_test_after": reliability(proba, test.labels)["ece"],
        "confused": most_confused_pairs(np.array(metrics["confusion_matrix"]), metrics["classes"], k=4),
        "config": config_without_machine_paths(record["config"]), "fit": record.get("fit", {}), "n_train": record["n_train"],
        "n_train_by_source": record.get("n_train_by_source", {}), "train_seconds": record["train_seconds"],
        "inference_images_per_second": record.get("inference_images_per_second"),
        "environment": meta.get("environment", {}), "command": command, "label_source": meta.get("label_source"),
        "datasets": {n: {**d, **describe_dataset(d.get("fingerprint"))} for n, d in datasets.items()},
        "split_seed": meta.get("data", {}).get("split_seed", 0), "robustness": robustness(predictor, test, clean=proba),
    }  # fmt: skip


def model_card(c: dict) -> str:
    """The card as Markdown, section by section."""
    title = "default model" if c["name"] == "default" else f"`{c['name']}` model"
    loader = "emodetect.load_model()" if c["name"] == "default" else f'emodetect.load_model("{c["name"]}")'
    head = [f"# Model card: emodetect {title}", "",
            f"**{c['model']}**: {c['description']}. Float16 weights, {c['bytes'] / 1e6:.2f} MB, loaded by `{loader}`"
            + (f", and an int8 ONNX graph of them ({c['int8']['bytes'] / 1e6:.2f} MB) that it runs when onnxruntime is "
               "installed" if c["backend"] == "int8" else "") + ".", ""]  # fmt: skip
    sections = (_io_section, _training_section, _metrics_section, _robustness_section, _limits_section, _licence_section)
    return "\n".join(head + [line for section in sections for line in section(c)])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _io_section(c: dict) -> list[str]:
    pre = c["preprocess"]
    lines = ["## Input and output", "",
             f"- input: a face crop, resized to {pre['size']}x{pre['size']} {pre['mode'].upper()}; normalised with mean "
             f"{pre['mean']} and std {pre['std']} (the file records this; `Predictor` applies it)",
             f"- output: probabilities over {len(CLASSES)} classes, in this order: {', '.join(CLASSES)}",
             f"- calibration: temperature scaling, T = {c['temperature']:.3f} (fitted on the validation split); "
             f"test-split expected calibration error {c['ece_test_before']:.3f} before, {c['ece_test_after']:.3f} after"]  # fmt: skip
    if c["ece_test_after"] > c["ece_test_before"]:
        lines[-1] += " (the validation-fitted temperature did not lower the test ECE)"
    lines.append("- test-time augmentation: " + ("the logits of the image and its mirror image are averaged"
                                                 if c["tta_flip"] else "none"))  # fmt: skip
    return lines + [""]


def _training_section(c: dict) -> list[str]:
    cfg, fit, env = c["config"], c["fit"], c["environment"]
    lines = ["## Training", ""]
    for name, d in c["datasets"].items():
        n = c["n_train_by_source"].get(name)
        lines.append(f"- data `{name}`: {d['name']}; labels: {d['labels']}" + (f"; {n:,} train images" if n else ""))
    lines.append(f"- label source: {c['label_source']}; each dataset's stored split (seed {c['split_seed']}, duplicate "
                 f"groups kept whole); {c['n_train']:,} train images in all")  # fmt: skip
    start = (f"pretrained weights: {c['pretrained']} ({c['pretrained_licence']}), new "
             f"{len(CLASSES)}-class head" if c["pretrained"] else "trained from scratch (no pretrained weights)")  # fmt: skip
    if cfg.get("init_from"):
        start += (f"; then every layer it shares with `{cfg['init_from']}`{_sha(fit.get('init_from_sha256'))} (same "
                  "name and shape) taken from that model")  # fmt: skip
    aug = ", ".join(f"{k} {v}" for k, v in cfg.get("augment", {}).items())
    aug += "".join(f"; on {name} images: " + ", ".join(f"{k} {v}" for k, v in d.items())
                   for name, d in cfg.get("augment_by_source", {}).items())  # fmt: skip
    distilled = []
    if cfg.get("teacher"):
        views = "each clean train image, once" if cfg.get("distill_views", "clean") == "clean" else "every augmented batch"
        digests = fit.get("teacher_sha256") or [None] * len(teacher_names(cfg["teacher"]))
        teachers = [f"`{t}`{_sha(d)}" for t, d in zip(teacher_names(cfg["teacher"]), digests)]
        who = f"{teachers[0]}: its" if len(teachers) == 1 else \
            "an ensemble of " + ", ".join(teachers) + ": the mean of their logits as"  # fmt: skip
        distilled = [f"- distilled from {who} soft targets ({views}) at temperature "
                     f"{cfg['distill_temperature']} weigh {cfg['distill_alpha']}, the labels {1 - cfg['distill_alpha']:.2g}"]
    lines += [f"- start: {start}",
              f"- up to {cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']} with "
              f"{cfg['schedule']} schedule and {cfg['warmup_epochs']} warm-up epoch(s), weight decay "
              f"{cfg['weight_decay']}, label smoothing {cfg['label_smoothing']}, mixup {cfg['mixup']}, class weights "
              f"{cfg['class_weights']}, seed {cfg['seed']}",
              f"- augmentation: {aug}",
              *distilled,
              f"- early stopping on {cfg['monitor'].replace('_', ' ')} (patience {cfg['patience']}): best epoch "
              f"{fit.get('best_epoch', '?')} of {fit.get('epochs_run', '?')} run",
              *(["- prior correction (logit adjustment, Menon et al. 2021): after training, the output bias moved by "
                 + ", ".join(f"{k} {v:+.2f}" for k, v in zip(CLASSES, fit["prior_correction"]))
                 + ", which undoes the class weights' tilt: predictions follow the training data's own class mix"]
                if fit.get("prior_correction") else []),
              f"- {c['train_seconds'] / 60:.0f} minutes on {env.get('cpu', 'an unrecorded CPU')} "
              f"({env.get('cpu_count', '?')} cores, {env.get('torch_threads', '?')} torch threads)"]  # fmt: skip
    if c["inference_images_per_second"]:
        lines[-1] += f"; inference about {c['inference_images_per_second']:,.0f} images/s at batch 256 on that machine"
    return lines + ["", "Reproduce (the numbers below come from this command and `emodetect ship`):", "", "```bash",
                    c["command"] or "(the training command was not recorded)", "```", ""]  # fmt: skip


def _sha(digest: str | None) -> str:
    """Which file a model name meant when the run used it (runs before these were recorded: nothing)."""
    return f" (file SHA-256 {digest[:12]})" if digest else ""


def _metrics_section(c: dict) -> list[str]:
    m = c["test"]
    q = c.get("int8") if c.get("backend") == "int8" else None
    how = (f"the int8 graph in ONNX Runtime (the float16 weights there score {q['fp32_accuracy']:.4f}: a change of "
           f"{100 * q['change']:+.1f} points; it was kept because on the validation split it changed accuracy by "
           f"{100 * q['val_change']:+.1f} points, within the {100 * q['limit']:.1f}-point limit)" if q else
           "the float16 weights")  # fmt: skip
    lines = ["## Test-split metrics (the shipped file, as `load_model` runs it)", "",
             f"Accuracy **{m['accuracy']:.4f}**, balanced accuracy {m['balanced_accuracy']:.4f}, macro-F1 "
             f"**{m['macro_f1']:.4f}** on {m['n_images']:,} test images, through {how}. The float32 run scored "
             f"accuracy {c['test_fp32']['accuracy']:.4f}; the shipped model agrees with it on "
             f"{100 * c['agreement_with_fp32']:.2f}% of the test predictions. The model was chosen on "
             f"validation (val accuracy {c['val_fp32']['accuracy']:.4f}); the test split was scored once.", ""]  # fmt: skip
    if len(m.get("by_source", {})) > 1:
        lines += ["| dataset | images | accuracy | balanced acc. | macro-F1 |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {v['n_images']:,} | {v['accuracy']:.4f} | {v['balanced_accuracy']:.4f} | {v['macro_f1']:.4f} |"
                  for s, v in m["by_source"].items()] + [""]  # fmt: skip
    lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
              for k, v in m["per_class"].items()]  # fmt: skip
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(m["classes"]) + " |", "|---|" + "---|" * len(m["classes"])]  # fmt: skip
    lines += [f"| {k} | " + " | ".join(str(v) for v in row) + " |" for k, row in zip(m["classes"], m["confusion_matrix"])]
    return lines + ["", "Most confused (true -> predicted): " + ", ".join(f"{t} -> {p} ({n})" for t, p, n in c["confused"])
                    + ".", ""]  # fmt: skip


def _robustness_section(c: dict) -> list[str]:
    r = c.get("robustness")
    if not r:
        return []
    sources = sorted(r["clean"].get("by_source", {})) if len(r["clean"].get("by_source", {})) > 1 else []
    lines = ["## Robustness (test split, each corruption applied to every image; the shipped file, as `load_model` "
             "runs it)", "",
             "| corruption | accuracy | change |" + "".join(f" {s} | change |" for s in sources),
             "|---|---|---|" + "---|---|" * len(sources)]  # fmt: skip

    def cells(acc: float, base: float) -> str:
        return f" {acc:.4f} | {100 * (acc - base):+.1f} points |"

    for k, v in r.items():
        row = f"| {k} |" + cells(v["accuracy"], r["clean"]["accuracy"])
        for s in sources:
            row += cells(v["by_source"][s]["accuracy"], r["clean"]["by_source"][s]["accuracy"])
        lines.append(row)
    return lines + [""]


def _by_format(cells: dict) -> str:
    return ", ".join(f"{f.upper()} {_pct(x['accuracy'])} (n={x['n']:,})" for f, x in cells.items())


def _limits_section(c: dict) -> list[str]:
    m = c["test"]
    lines = ["## Known biases and limits", ""]
    # per dataset where the metrics have it: a format means a different thing in each (FER2013's files are all JPEG)
    per_source = {s: v for s, v in m.get("by_source", {}).items() if len(v.get("by_format", {})) > 1}
    for where, v in (per_source.items() if per_source else [("", m)]):
        fmt = v.get("by_format", {})
        if len(fmt) < 2:
            continue
        acc = {f: x["accuracy"] for f, x in fmt.items()}
        lines.append(f"- **Accuracy differs by file format**{f' on {where} faces' if where else ''}, a proxy for the "
                     "images' source: " + _by_format(fmt) + f", a gap of {100 * (max(acc.values()) - min(acc.values())):.1f} points. In the AffectNet subset "
                     "happy and neutral faces are almost all PNG (FFHQ-derived) and anger, fear and sad all JPEG, so the "
                     "gap mostly compares classes, and part of what a model learns there can be the source rather than "
                     "the expression.")  # fmt: skip
        within = v.get("by_format_within_class", {})
        if within:
            lines.append("- **Within one class**, where the test split has at least 10 faces of each format, the format "
                         "alone shows: " + "; ".join(f"{cl} {_by_format(cells)}" for cl, cells in within.items()) + ".")
    weakest = sorted(m["per_class"].items(), key=lambda kv: kv[1]["f1"])[:2]
    lines += ["- The test splits have their datasets' class mix; on data with another mix, accuracy differs.",
              "- The labels are noisy (annotators disagree on about a third of such faces). The weakest classes are "
              + " and ".join(f"{k} (F1 {v['f1']:.2f})" for k, v in weakest) + "; expect more errors on them.",
              f"- Faces are expected cropped and roughly aligned ({c['preprocess']['size']}x{c['preprocess']['size']} "
              "after resizing). For whole photos, `emodetect predict` finds and crops the faces first.",
              "- Age, ethnicity and gender balance of the training faces were not audited.", ""]  # fmt: skip
    return lines


def _licence_section(c: dict) -> list[str]:
    lines = ["## Licences", ""]
    for name, d in c["datasets"].items():
        lines.append(f"- Training data `{name}` ({d['name']}): {d['licence']}.")
    lines.append("- The weights were trained on that data: treat them as bound by the same terms.")
    if c["pretrained"]:
        lines.append(f"- Initial weights: {c['pretrained']}, {c['pretrained_licence']}.")
    return lines + ["- Code: MIT.", ""]
