"""Data audit: what the dataset really holds, before any model sees it. Numbers first, files second."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emodetect import plots
from emodetect.data.dataset import Dataset
from emodetect.data.split import SPLITS
from emodetect.files import write_json
from emodetect.labels import CLASSES, labels_to_indices

RELFCS_CEILINGS = (0.85, 0.8, 0.75)


def compute_audit(ds: Dataset) -> dict:
    """All audit numbers for an unfiltered dataset (folder labels, no relFCs ceiling)."""
    m = ds.manifest
    folder = m["folder_label"]
    resized = int(((m["width"] != ds.info["size"]) | (m["height"] != ds.info["size"])).sum())
    split_counts = {s: {c: int(((ds.split == k) & (folder == c)).sum()) for c in CLASSES} for k, s in enumerate(SPLITS)}
    return {
        "source": ds.info["source"],
        "fingerprint": ds.info["fingerprint"],
        "n_images": int(len(folder)),
        "n_unreadable": len(ds.info["unreadable"]),
        "unreadable": ds.info["unreadable"],
        "n_ignored_files": ds.info["n_ignored_files"],
        "n_resized": resized,
        "classes": list(CLASSES),
        "counts": {"folder": _counts(folder), "csv": _counts(m["csv_label"])},
        "csv": _label_agreement(ds),
        "duplicates": {"exact": _groups(ds, "exact_group"), "near": _groups(ds, "dup_group")},
        "formats": _formats(folder, m["format"]),
        "relfcs": _relfcs(m["relfcs"], folder),
        "split": {"seed": ds.info["seed"], "fractions": ds.info["fractions"], "counts": split_counts},
    }


def _counts(labels: np.ndarray) -> dict:
    return {c: int((labels == c).sum()) for c in CLASSES}


def _label_agreement(ds: Dataset) -> dict:
    """Folder label against labels.csv label: agreement and the confusion table (rows folder, columns CSV)."""
    folder, csv = ds.manifest["folder_label"], ds.manifest["csv_label"]
    has_csv = csv != ""
    table = np.zeros((len(CLASSES), len(CLASSES)), int)
    np.add.at(table, (labels_to_indices(folder[has_csv]), labels_to_indices(csv[has_csv])), 1)
    n_csv = int(has_csv.sum())
    return {
        "n_rows_matched": n_csv,
        "n_images_without_row": int((~has_csv).sum()),
        "images_without_row_by_class": {c: int(((folder == c) & ~has_csv).sum()) for c in CLASSES},
        "n_rows_without_image": ds.info["n_csv_rows_without_image"],
        "agreement": int(np.trace(table)) / n_csv if n_csv else None,
        "confusion_folder_vs_csv": table.tolist(),
    }


def _groups(ds: Dataset, column: str) -> dict:
    g, folder = ds.manifest[column], ds.manifest["folder_label"]
    ids = np.unique(g[g >= 0])
    return {
        "n_groups": int(len(ids)),
        "n_images": int((g >= 0).sum()),
        "n_groups_across_classes": int(sum(len(set(folder[g == k])) > 1 for k in ids)),
        "largest_group": int(np.bincount(g[g >= 0]).max()) if len(ids) else 0,
        "n_groups_across_splits": int(sum(len(set(ds.split[g == k])) > 1 for k in ids)),
    }


def _formats(folder: np.ndarray, fmt: np.ndarray) -> dict:
    """File formats per class, and how far the format alone predicts the class (the source shortcut)."""
    formats = sorted(set(fmt))
    table = {c: {f: int(((folder == c) & (fmt == f)).sum()) for f in formats} for c in CLASSES}
    format_only = sum(max(int(((fmt == f) & (folder == c)).sum()) for c in CLASSES) for f in formats)
    majority = max(_counts(folder).values())
    skewed = {c: max(v.values()) / max(1, sum(v.values())) for c, v in table.items() if sum(v.values())}
    warning = None
    dominant = {c: max(table[c], key=table[c].get) for c in skewed if skewed[c] >= 0.9}
    if len(formats) > 1 and len(set(dominant.values())) > 1:
        per = ", ".join(f"{c}: {100 * skewed[c]:.0f}% {dominant[c]}" for c in dominant)
        warning = (f"file format shortcut: a classifier that sees only the file format reaches "
                   f"{100 * format_only / len(folder):.1f}% accuracy (majority class {100 * majority / len(folder):.1f}%). "
                   f"Classes dominated by one format: {per}. The formats come from different sources "
                   "(alignment, background, compression), so a model can learn the source instead of the expression.")  # fmt: skip
    return {"by_class": table, "format_only_accuracy": format_only / len(folder),
            "majority_class_accuracy": majority / len(folder), "warning": warning}  # fmt: skip


def _relfcs(rel: np.ndarray, folder: np.ndarray) -> dict:
    finite = rel[np.isfinite(rel)]
    if not len(finite):
        return {"n_with_value": 0, "min": None, "max": None, "quantiles": {}, "mean_by_class": {}, "dropped_at_ceiling": {}}
    return {
        "n_with_value": int(len(finite)),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "quantiles": {str(q): float(np.quantile(finite, q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)},
        "mean_by_class": {c: float(np.nanmean(rel[folder == c])) if np.isfinite(rel[folder == c]).any() else None
                          for c in CLASSES},  # fmt: skip
        "dropped_at_ceiling": {str(t): int((finite > t).sum()) for t in RELFCS_CEILINGS},
    }


def sample_faces(ds: Dataset, per_class: int = 10, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """A fixed random sample of ``per_class`` faces of every class (blank where a class has fewer)."""
    rng = np.random.default_rng(seed)
    shape = ds.images.shape[1:]
    out, present = [], []
    for c in range(len(ds.classes)):
        idx = np.nonzero(ds.labels == c)[0]
        if not len(idx):
            continue
        present.append(ds.classes[c])
        pick = rng.choice(idx, min(per_class, len(idx)), replace=False)
        faces = [ds.images[i] for i in pick] + [np.full(shape, 255, np.uint8)] * (per_class - len(pick))
        out.extend(faces)
    return np.stack(out), present


def write_audit(ds: Dataset, out_dir: str | Path) -> dict:
    """Write ``audit.json``, ``audit.md``, ``contact_sheet.png`` and plots into out_dir; return the numbers."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    audit = compute_audit(ds)
    write_json(out / "audit.json", audit, indent=2)

    faces, present = sample_faces(ds)
    plots.save(plots.grid(faces, present, n_cols=10, title="Sample faces per folder class"), out / "contact_sheet.png")
    table = np.array(audit["csv"]["confusion_folder_vs_csv"])
    plots.save(
        plots.heatmap(table, CLASSES, CLASSES, title="Folder label (rows) vs labels.csv label (columns)",
                      xlabel="labels.csv", ylabel="folder"),  # fmt: skip
        out / "folder_vs_csv.png",
    )
    rel = ds.manifest["relfcs"]
    groups = {c: rel[ds.manifest["folder_label"] == c] for c in CLASSES}
    plots.save(plots.histograms(groups, title="relFCs by folder class (high = flat, low-detail)", xlabel="relFCs"),
               out / "relfcs.png")  # fmt: skip
    (out / "audit.md").write_text(audit_markdown(audit))
    return audit


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def audit_markdown(a: dict) -> str:
    """audit.md, section by section, from the numbers of `compute_audit`."""
    sections = (_md_summary, _md_counts, _md_formats, _md_agreement, _md_duplicates, _md_relfcs, _md_split)
    return "\n".join(line for section in sections for line in section(a)) + "\n"


def _md_summary(a: dict) -> list[str]:
    c = a["csv"]
    lines = ["# Data audit", "", f"Source: `{a['source']}` (fingerprint `{a['fingerprint'][:12]}`)", "",
             f"- readable images: **{a['n_images']:,}**; unreadable: **{a['n_unreadable']}**; "
             f"non-image or unplaced files ignored: {a['n_ignored_files']}; resized to 96x96: {a['n_resized']}"]  # fmt: skip
    if a["unreadable"]:
        lines.append("- unreadable files: " + ", ".join(f"`{p}`" for p in a["unreadable"][:50]))
    return lines + [f"- labels.csv rows matched to an image: {c['n_rows_matched']:,}; images without a row: "
                    f"{c['n_images_without_row']:,}; rows without an image: {c['n_rows_without_image']}",
                    f"- folder label and CSV label agree on **{_pct(c['agreement'])}** of the images that have a row", ""]  # fmt: skip


def _md_counts(a: dict) -> list[str]:
    formats = list(a["formats"]["by_class"][a["classes"][0]])
    lines = ["## Counts per class", "", "| class | folder | labels.csv | no CSV row | " + " | ".join(formats) + " |",
             "|---|---|---|---|" + "---|" * len(formats)]  # fmt: skip
    for k in a["classes"]:
        fmts = " | ".join(f"{v:,}" for v in a["formats"]["by_class"][k].values())
        lines.append(f"| {k} | {a['counts']['folder'][k]:,} | {a['counts']['csv'][k]:,} | "
                     f"{a['csv']['images_without_row_by_class'][k]:,} | {fmts} |")  # fmt: skip
    return lines


def _md_formats(a: dict) -> list[str]:
    f = a["formats"]
    return ["", "## File formats", "",
            f"> **Warning.** {f['warning']}" if f["warning"] else "No class is dominated by a single file format."]


def _md_agreement(a: dict) -> list[str]:
    classes = a["classes"]
    lines = ["", "## Folder label vs labels.csv label", "", "Rows: folder; columns: labels.csv.", "",
             "| folder \\ csv | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]  # fmt: skip
    lines += [f"| {k} | " + " | ".join(str(v) for v in row) + " |" for k, row in zip(classes, a["csv"]["confusion_folder_vs_csv"])]
    return lines + ["", "![folder vs csv](folder_vs_csv.png)"]


def _md_duplicates(a: dict) -> list[str]:
    lines = ["", "## Duplicates", "", "| kind | groups | images | groups across classes | largest | groups across splits |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    return lines + [f"| {kind} | {d['n_groups']} | {d['n_images']} | {d['n_groups_across_classes']} | {d['largest_group']} "
                    f"| {d['n_groups_across_splits']} |" for kind, d in a["duplicates"].items()]  # fmt: skip


def _md_relfcs(a: dict) -> list[str]:
    r = a["relfcs"]
    if not r["n_with_value"]:
        return ["", "## relFCs", "", "No relFCs values (no labels.csv or no relFCs column)."]
    q = r["quantiles"]
    return ["", "## relFCs", "",
            "relFCs is the share of the image's first principal component (high = flat, low-detail), not a label confidence.",
            "", f"- range {r['min']:.3f} to {r['max']:.3f}; median {q['0.5']:.3f}; 1% / 99% quantiles {q['0.01']:.3f} / "
            f"{q['0.99']:.3f}", "- images dropped by a ceiling: " + ", ".join(f"{t}: {n:,}" for t, n in r["dropped_at_ceiling"].items()),
            "", "![relFCs](relfcs.png)"]  # fmt: skip


def _md_split(a: dict) -> list[str]:
    s, classes = a["split"], a["classes"]
    lines = ["", f"## Stored split (seed {s['seed']}, fractions {s['fractions']}, duplicate groups kept whole)", "",
             "| split | " + " | ".join(classes) + " | total |", "|---|" + "---|" * (len(classes) + 1)]  # fmt: skip
    lines += [f"| {name} | " + " | ".join(f"{v:,}" for v in counts.values()) + f" | {sum(counts.values()):,} |"
              for name, counts in s["counts"].items()]  # fmt: skip
    return lines + ["", "## Sample faces", "", "![contact sheet](contact_sheet.png)", ""]
