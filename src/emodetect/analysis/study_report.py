"""The study report: figures drawn from the study's numbers, then report.md and self-contained report.html."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emodetect import plots
from emodetect.analysis.document import Document
from emodetect.evaluation.metrics import most_confused_pairs
from emodetect.evaluation.predictions import read_predictions
from emodetect.labels import CLASS_INDEX, CLASSES


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def rank(models: dict[str, dict]) -> list[str]:
    """Model names by validation accuracy, best first (the test split never orders anything)."""
    return sorted(models, key=lambda n: -models[n]["val"]["accuracy"])


def observations(result: dict) -> list[str]:
    """Short findings written from the numbers."""
    models, ens, pub = result["models"], result["ensembles"], result["published"]
    order = rank(models)
    best = order[0]
    b = models[best]["test"]
    obs = [f"Best single model by validation accuracy: **{best}**, test accuracy {_pct(b['accuracy'])}, "
           f"balanced accuracy {_pct(b['balanced_accuracy'])}, macro-F1 {b['macro_f1']:.3f}."]  # fmt: skip
    classical = [n for n in order if models[n]["kind"] == "sklearn"]
    if classical:
        c = models[classical[0]]
        obs.append(f"Best classical model: **{classical[0]}** (test accuracy {_pct(c['test']['accuracy'])}, "
                   f"macro-F1 {c['test']['macro_f1']:.3f}).")  # fmt: skip
    vs = [f"{n} {_pct(models[n]['val']['accuracy'])} vs {_pct(p)}" for n, p in pub.items() if n in models]
    if vs:
        obs.append("Validation accuracy against the published notebook (ours vs theirs; the class mix differs, "
                   "see the data section): " + "; ".join(vs) + ".")  # fmt: skip
    if "cnn_seed" in models:
        base = models["cnn_seed"]["val"]["accuracy"]
        for n in ("mini_xception", "efficientnet_lite0"):
            if n in models:
                d = models[n]["val"]["accuracy"] - base
                obs.append(f"Transfer learning: {n} is {100 * d:+.1f} points of validation accuracy against the "
                           f"study's CNN trained from scratch.")  # fmt: skip
    for name, e in ens.items():
        if isinstance(e, dict) and "val" in e:
            known = [m for m in e["members"] if m in models]
            ref = max(known, key=lambda m: models[m]["val"]["accuracy"]) if known else None
            if ref:
                d = e["val"]["accuracy"] - models[ref]["val"]["accuracy"]
                obs.append(f"Ensemble {name} ({' + '.join(e['members'])}): validation accuracy "
                           f"{_pct(e['val']['accuracy'])}, {100 * d:+.1f} points against its best member ({ref}) alone.")  # fmt: skip
    pairs = most_confused_pairs(np.array(b["confusion_matrix"]), b["classes"], k=3)
    if pairs:
        obs.append(f"Most confused pairs for {best} (test, true -> predicted): "
                   + ", ".join(f"{t} -> {p} ({n})" for t, p, n in pairs) + ".")  # fmt: skip
    worst = min(b["per_class"].items(), key=lambda kv: kv[1]["f1"])
    obs.append(f"Weakest class for {best}: {worst[0]} (F1 {worst[1]['f1']:.3f}, {worst[1]['support']} test images).")
    cal = models[best].get("calibration")
    if cal:
        obs.append(f"Temperature scaling (T = {cal['temperature']:.2f}, fitted on validation) moves {best}'s expected "
                   f"calibration error from {cal['before']['ece']:.3f} to {cal['after']['ece']:.3f}.")  # fmt: skip
    fa = b.get("by_format")
    if fa and len(fa) > 1:
        within = "; ".join(f"{cl} " + ", ".join(f"{f} {_pct(v['accuracy'])} (n={v['n']})" for f, v in cells.items())
                           for src in b.get("by_source", {}).values()
                           for cl, cells in src.get("by_format_within_class", {}).items())  # fmt: skip
        obs.append(f"File-format shortcut check ({best}, test): accuracy on " +
                   ", ".join(f"{f} images {_pct(v['accuracy'])} (n={v['n']})" for f, v in fa.items()) + "."
                   + (f" Within one class (at least 10 test images of each format): {within}." if within else ""))  # fmt: skip
    return obs


def confused_faces(run_dir: Path, ds, per_pair: int = 8, k: int = 3):
    """Test faces of the k most confused (true, predicted) pairs, read from the user's data at run time."""
    test = read_predictions(run_dir)["test"]
    paths, y, pred = test["path"], test["label"], test["proba"].argmax(1)
    cm = np.zeros((len(CLASSES), len(CLASSES)), int)
    np.add.at(cm, (y, pred), 1)
    pairs = most_confused_pairs(cm, CLASSES, k=k)
    if not pairs:
        return None
    index = {p: i for i, p in enumerate(ds.manifest["path"])}
    blank = np.full(ds.images.shape[1:], 255, np.uint8)
    faces, titles = [], []
    for t, p, _ in pairs:
        rows = np.nonzero((y == CLASS_INDEX[t]) & (pred == CLASS_INDEX[p]))[0][:per_pair]
        faces += [ds.images[index[paths[r]]] for r in rows] + [blank] * (per_pair - len(rows))
        titles.append(f"{t} -> {p}")
    return plots.grid(np.stack(faces), titles, n_cols=per_pair, title=f"{run_dir.name}: most confused test faces")


def write_report(result: dict, out: Path, ds) -> None:
    """Draw the figures, then write report.md and report.html into `out`."""
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    models = result["models"]
    order = rank(models)
    f1 = np.array([[models[n]["test"]["per_class"].get(c, {}).get("f1", np.nan) for c in CLASSES] for n in order])
    plots.save(plots.heatmap(f1, order, CLASSES, title="Per-class F1 on the test split", fmt=".2f", vmin=0, vmax=1,
                             cmap="Blues"), figs / "per_class_f1.png")  # fmt: skip
    plots.save(plots.bars({n: models[n]["test"]["accuracy"] for n in order}, title="Test accuracy", ylabel="accuracy"),
               figs / "accuracy.png")  # fmt: skip
    confused = confused_faces(out / "models" / order[0], ds)
    if confused is not None:
        plots.save(confused, figs / "confused_faces.png")

    doc = Document("emodetect study: classical ML vs deep learning for facial emotion recognition")
    env = result["environment"]
    doc.paragraph(f"Preset `{result['preset']}`, run {env['date']} on {env['cpu']} ({env['cpu_count']} cores, "
                  f"{env['torch_threads']} torch threads). Data: `{result['data']['source']}`, "
                  f"{result['data']['label_source']} labels.")  # fmt: skip
    doc.heading("Observations")
    doc.bullets(observations(result))
    for section in (_results_section, _cross_dataset_section, _robustness_section, _curves_section, _ensembles_section,
                    _embeddings_section):  # fmt: skip
        section(doc, result, out, order)
    doc.heading("Misclassified faces")
    if confused is not None:
        doc.paragraph(f"Test faces of the most confused pairs of {order[0]}, rendered from your copy of the data "
                      "(nothing from the dataset ships with emodetect).")  # fmt: skip
        doc.image(figs / "confused_faces.png", "most confused faces")
    else:
        doc.paragraph(f"{order[0]} misclassified no test image.")
    _data_section(doc, result, out)
    doc.heading("Reproducibility")
    doc.paragraph("Library versions and hardware:")
    doc.table(["library", "version"], [[k, v] for k, v in env["versions"].items()])
    doc.bullets([f"platform: {env['platform']}", f"CPU: {env['cpu']} ({env['cpu_count']} cores, "
                 f"torch CPU capability {env['cpu_capability']})"])  # fmt: skip
    doc.paragraph("Study config (preset plus any `--config` file):")
    doc.code(json.dumps(result["config"], indent=1))
    (out / "report.md").write_text(doc.markdown(out))
    (out / "report.html").write_text(doc.html())


def _results_section(doc: Document, result: dict, out: Path, order: list[str]) -> None:
    models = result["models"]
    doc.heading("Results")
    doc.paragraph("Metrics on the stored test split (selection and tuning used the validation split only). "
                  "`published` is the notebook's validation accuracy. Inference speed: batch 256 on this CPU.")  # fmt: skip
    rows = []
    for n in order:
        m = models[n]
        rows.append([n, "classical" if m["kind"] == "sklearn" else "deep", f"{m['test']['accuracy']:.4f}",
                     f"{m['test']['balanced_accuracy']:.4f}", f"{m['test']['macro_f1']:.4f}", f"{m['val']['accuracy']:.4f}",
                     _pct(result["published"].get(n)) if n in result["published"] else "",
                     _fmt_seconds(m["train_seconds"]), f"{m['inference_images_per_second']:,.0f}",
                     f"{m['model_bytes'] / 1e6:.1f} MB"])  # fmt: skip
    for name, e in result["ensembles"].items():
        if isinstance(e, dict) and "test" in e:
            rows.append([f"{name}: {' + '.join(e['members'])}", "ensemble", f"{e['test']['accuracy']:.4f}",
                         f"{e['test']['balanced_accuracy']:.4f}", f"{e['test']['macro_f1']:.4f}",
                         f"{e['val']['accuracy']:.4f}", "", "", "", ""])  # fmt: skip
    doc.table(["model", "track", "accuracy", "balanced acc.", "macro-F1", "val acc.", "published", "train time",
               "infer img/s", "size"], rows)  # fmt: skip
    doc.image(out / "figures" / "accuracy.png", "test accuracy per model")
    doc.heading("Per-class F1", 3)
    doc.image(out / "figures" / "per_class_f1.png", "per-class F1 heatmap")
    doc.heading("Confusion matrices (test, row-normalised)")
    for n in order:
        doc.image(out / "models" / n / "confusion_test.png", f"confusion matrix {n}")


def _cross_dataset_section(doc: Document, result: dict, out: Path, order: list[str]) -> None:
    cross = result.get("cross_dataset") or {}
    if not cross:
        return
    doc.heading("Other datasets, zero-shot")
    doc.paragraph("Every model as trained above, scored on every image of other datasets it never saw (accuracy / "
                  "macro-F1 over the classes each dataset has). Test accuracy on the study's own data for reference.")  # fmt: skip
    names = list(cross)
    rows = [[n, f"{result['models'][n]['test']['accuracy']:.4f}",
             *(f"{cross[d][n]['accuracy']:.4f} / {cross[d][n]['macro_f1']:.4f}" if n in cross[d] else "" for d in names)]
            for n in order]  # fmt: skip
    doc.table(["model", "test acc. (own data)", *(f"{d} ({next(iter(cross[d].values()))['n_images']:,} images)"
                                                 for d in names)], rows)  # fmt: skip


def _robustness_section(doc: Document, result: dict, out: Path, order: list[str]) -> None:
    models = result["models"]
    rows = [n for n in order if models[n].get("robustness")]
    if not rows:
        return
    names = [k for k in models[rows[0]]["robustness"] if k != "clean"]
    doc.heading("Robustness and the file-format shortcut")
    doc.paragraph("Test accuracy as it is, by file format (PNG: FFHQ-derived, JPEG: AffectNet), and under fixed "
                  "corruptions of every test image (change in points against the clean accuracy).")  # fmt: skip
    fmts = sorted({f for n in rows for f in models[n]["test"].get("by_format", {})})
    table = []
    for n in rows:
        r, m = models[n]["robustness"], models[n]["test"]
        base = r["clean"]["accuracy"]
        table.append([n, f"{base:.4f}", *(_pct(m.get("by_format", {}).get(f, {}).get("accuracy")) for f in fmts),
                      *(f"{100 * (r[k]['accuracy'] - base):+.1f}" for k in names)])  # fmt: skip
    doc.table(["model", "clean", *(f"{f.upper()}" for f in fmts), *names], table)


def _curves_section(doc: Document, result: dict, out: Path, order: list[str]) -> None:
    models = result["models"]
    nets = [n for n in order if models[n]["kind"] == "torch"]
    if not nets:
        return
    doc.heading("Training curves")
    for n in nets:
        h = models[n].get("history") or []
        fit = models[n].get("fit", {})
        doc.paragraph(f"**{n}**: {len(h)} epochs, best epoch {fit.get('best_epoch', '?')}"
                      + (", stopped early" if fit.get("stopped_early") else "") + ".")  # fmt: skip
        if (out / "models" / n / "curves.png").exists():
            doc.image(out / "models" / n / "curves.png", f"training curves {n}")
    doc.heading("Calibration (temperature scaling on validation)")
    doc.paragraph("Every model's scores (a network's logits, a pipeline's log-probabilities or a linear SVM's "
                  "margins) are turned into probabilities by a softmax with a temperature fitted on validation.")  # fmt: skip
    doc.table(["model", "temperature", "ECE before", "ECE after"],
              [[n, f"{models[n]['calibration']['temperature']:.3f}", f"{models[n]['calibration']['before']['ece']:.4f}",
                f"{models[n]['calibration']['after']['ece']:.4f}"] for n in order if models[n].get("calibration")])  # fmt: skip
    doc.image(out / "models" / nets[0] / "reliability.png", f"reliability diagram {nets[0]}")


def _ensembles_section(doc: Document, result: dict, out: Path, order: list[str]) -> None:
    if not result["ensembles"]:
        return
    doc.heading("Ensembles (soft voting)")
    rows = []
    for name, e in result["ensembles"].items():
        if isinstance(e, dict) and "val" in e:
            rows.append([name, " + ".join(e["members"]), f"{e['val']['accuracy']:.4f}", f"{e['val']['macro_f1']:.4f}",
                         f"{e['test']['accuracy']:.4f}", f"{e['test']['macro_f1']:.4f}"])  # fmt: skip
            if "svm_val" in e:
                rows.append([f"{name} (SVM alone)", e["members"][1], f"{e['svm_val']['accuracy']:.4f}",
                             f"{e['svm_val']['macro_f1']:.4f}", f"{e['svm_test']['accuracy']:.4f}",
                             f"{e['svm_test']['macro_f1']:.4f}"])  # fmt: skip
    doc.table(["ensemble", "members", "val acc.", "val macro-F1", "test acc.", "test macro-F1"], rows)


def _embeddings_section(doc: Document, result: dict, out: Path, order: list[str]) -> None:
    if not result["embeddings"]:
        return
    doc.heading("Embeddings: K-Means, t-SNE, UMAP")
    doc.paragraph("Test-split embeddings (an MLP's last hidden layer, a network's penultimate features), "
                  "standardised and reduced to 50 dimensions by PCA; K-Means with k = number of classes.")  # fmt: skip
    doc.table(["model", "images", "dims", "ARI", "NMI", "silhouette (clusters)", "silhouette (true labels)"],
              [[n, e["n_images"], e["dims"], f"{e['ari']:.3f}", f"{e['nmi']:.3f}", f"{e['silhouette_clusters']:.3f}",
                f"{e['silhouette_true_labels']:.3f}"] for n, e in result["embeddings"].items()])  # fmt: skip
    for n in result["embeddings"]:
        doc.image(out / "models" / n / "embeddings.png", f"embeddings {n}")


def _data_section(doc: Document, result: dict, out: Path) -> None:
    a = result["audit"]
    doc.heading("Data")
    c = a["csv"]
    doc.bullets([
        f"{a['n_images']:,} readable images, {a['n_unreadable']} unreadable; label source for every model: "
        f"**{result['data']['label_source']}**" + (f" (limited to {result['data']['config']['limit_per_class']} train images "
        "per class in this preset)" if result["data"]["config"].get("limit_per_class") else ""),
        f"folder and labels.csv labels agree on {_pct(c['agreement'])} of the images with a row; "
        f"{c['n_images_without_row']:,} images have no row",
        *(f"{k} duplicates: {d['n_groups']} groups, {d['n_images']} images, {d['n_groups_across_classes']} across "
          f"classes, {d['n_groups_across_splits']} across splits" for k, d in a["duplicates"].items()),
    ])  # fmt: skip
    if a["formats"]["warning"]:
        doc.note("Warning: " + a["formats"]["warning"])
    split = a["split"]["counts"]
    doc.table(["split", *CLASSES, "total"],
              [[s, *(f"{counts.get(k, 0):,}" for k in CLASSES), f"{sum(counts.values()):,}"] for s, counts in split.items()])  # fmt: skip
    if (out / "audit" / "contact_sheet.png").exists():
        doc.paragraph("The full data audit is in `audit/audit.md`.")
