"""Data audit: what the dataset really holds, before any model sees it. Numbers first, files second."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emodetect.data.ingest import Dataset
from emodetect.data.split import SPLITS
from emodetect.labels import CLASSES

RELFCS_CEILINGS = (0.85, 0.8, 0.75)


def compute_audit(ds: Dataset) -> dict:
    """All audit numbers for an unfiltered dataset (folder labels, no relFCs ceiling)."""
    m = ds.manifest
    folder = m["folder_label"]
    csv = m["csv_label"]
    has_csv = csv != ""
    classes = list(CLASSES)
    idx = {c: i for i, c in enumerate(classes)}

    folder_counts = {c: int((folder == c).sum()) for c in classes}
    csv_counts = {c: int((csv == c).sum()) for c in classes}
    table = np.zeros((len(classes), len(classes)), int)  # rows folder, cols csv
    for f, c in zip(folder[has_csv], csv[has_csv]):
        table[idx[f], idx[c]] += 1
    agree = int(np.trace(table))
    n_csv = int(has_csv.sum())

    def groups(col: str) -> dict:
        g = m[col]
        ids = np.unique(g[g >= 0])
        cross = sum(len(set(folder[g == k])) > 1 for k in ids)
        split_cross = sum(len(set(ds.split[g == k])) > 1 for k in ids)
        return {
            "n_groups": int(len(ids)),
            "n_images": int((g >= 0).sum()),
            "n_groups_across_classes": int(cross),
            "largest_group": int(np.bincount(g[g >= 0]).max()) if len(ids) else 0,
            "n_groups_across_splits": int(split_cross),
        }

    formats = sorted(set(m["format"]))
    fmt_table = {c: {f: int(((folder == c) & (m["format"] == f)).sum()) for f in formats} for c in classes}
    # how far the file format alone predicts the class: the majority class of each format
    format_only = sum(max(int(((m["format"] == f) & (folder == c)).sum()) for c in classes) for f in formats)
    majority = max(folder_counts.values())
    skewed = {c: max(v.values()) / max(1, sum(v.values())) for c, v in fmt_table.items() if sum(v.values())}
    warn = None
    if len(formats) > 1:
        dominant = {c: max(fmt_table[c], key=fmt_table[c].get) for c in skewed if skewed[c] >= 0.9}
        if len(set(dominant.values())) > 1:
            per = ", ".join(f"{c}: {100 * skewed[c]:.0f}% {dominant[c]}" for c in dominant)
            warn = (
                f"file format shortcut: a classifier that sees only the file format reaches "
                f"{100 * format_only / len(folder):.1f}% accuracy (majority class {100 * majority / len(folder):.1f}%). "
                f"Classes dominated by one format: {per}. The formats come from different sources "
                "(alignment, background, compression), so a model can learn the source instead of the expression."
            )

    rel = m["relfcs"]
    finite = rel[np.isfinite(rel)]
    relfcs = {
        "n_with_value": int(len(finite)),
        "min": float(finite.min()) if len(finite) else None,
        "max": float(finite.max()) if len(finite) else None,
        "quantiles": {str(q): float(np.quantile(finite, q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)} if len(finite) else {},
        "mean_by_class": {c: float(np.nanmean(rel[folder == c])) if np.isfinite(rel[folder == c]).any() else None
                          for c in classes},  # fmt: skip
        "dropped_at_ceiling": {str(t): int((finite > t).sum()) for t in RELFCS_CEILINGS},
    }

    split_counts = {s: {c: int(((ds.split == k) & (folder == c)).sum()) for c in classes} for k, s in enumerate(SPLITS)}
    resized = int(((m["width"] != ds.info["size"]) | (m["height"] != ds.info["size"])).sum())
    return {
        "source": ds.info["source"],
        "fingerprint": ds.info["fingerprint"],
        "n_images": int(len(folder)),
        "n_unreadable": len(ds.info["unreadable"]),
        "unreadable": ds.info["unreadable"],
        "n_ignored_files": ds.info["n_ignored_files"],
        "n_resized": resized,
        "classes": classes,
        "counts": {"folder": folder_counts, "csv": csv_counts},
        "csv": {
            "n_rows_matched": n_csv,
            "n_images_without_row": int((~has_csv).sum()),
            "images_without_row_by_class": {c: int(((folder == c) & ~has_csv).sum()) for c in classes},
            "n_rows_without_image": ds.info["n_csv_rows_without_image"],
            "agreement": agree / n_csv if n_csv else None,
            "confusion_folder_vs_csv": table.tolist(),
        },
        "duplicates": {"exact": groups("exact_group"), "near": groups("dup_group")},
        "formats": {
            "by_class": fmt_table,
            "format_only_accuracy": format_only / len(folder),
            "majority_class_accuracy": majority / len(folder),
            "warning": warn,
        },
        "relfcs": relfcs,
        "split": {"seed": ds.info["seed"], "fractions": ds.info["fractions"], "counts": split_counts},
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
    from emodetect import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    audit = compute_audit(ds)
    (out / "audit.json").write_text(json.dumps(audit, indent=2))

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
    classes = a["classes"]
    lines = [
        "# Data audit",
        "",
        f"Source: `{a['source']}` (fingerprint `{a['fingerprint'][:12]}`)",
        "",
        f"- readable images: **{a['n_images']:,}**; unreadable: **{a['n_unreadable']}**; "
        f"non-image or unplaced files ignored: {a['n_ignored_files']}; resized to 96x96: {a['n_resized']}",
    ]
    if a["unreadable"]:
        lines.append("- unreadable files: " + ", ".join(f"`{p}`" for p in a["unreadable"][:50]))
    c = a["csv"]
    lines += [
        f"- labels.csv rows matched to an image: {c['n_rows_matched']:,}; images without a row: "
        f"{c['n_images_without_row']:,}; rows without an image: {c['n_rows_without_image']}",
        f"- folder label and CSV label agree on **{_pct(c['agreement'])}** of the images that have a row",
        "",
        "## Counts per class",
        "",
        "| class | folder | labels.csv | no CSV row | " + " | ".join(a["formats"]["by_class"][classes[0]]) + " |",
        "|---|---|---|---|" + "---|" * len(a["formats"]["by_class"][classes[0]]),
    ]
    for k in classes:
        fmts = " | ".join(f"{v:,}" for v in a["formats"]["by_class"][k].values())
        lines.append(
            f"| {k} | {a['counts']['folder'][k]:,} | {a['counts']['csv'][k]:,} | "
            f"{c['images_without_row_by_class'][k]:,} | {fmts} |"
        )
    f = a["formats"]
    lines += ["", "## File formats", ""]
    lines.append(f"> **Warning.** {f['warning']}" if f["warning"] else "No class is dominated by a single file format.")
    lines += [
        "",
        "## Folder label vs labels.csv label",
        "",
        "Rows: folder; columns: labels.csv.",
        "",
        "| folder \\ csv | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for k, row in zip(classes, c["confusion_folder_vs_csv"]):
        lines.append(f"| {k} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![folder vs csv](folder_vs_csv.png)", "", "## Duplicates", ""]
    lines += ["| kind | groups | images | groups across classes | largest | groups across splits |", "|---|---|---|---|---|---|"]
    for kind, d in a["duplicates"].items():
        lines.append(
            f"| {kind} | {d['n_groups']} | {d['n_images']} | {d['n_groups_across_classes']} | "
            f"{d['largest_group']} | {d['n_groups_across_splits']} |"
        )
    r = a["relfcs"]
    lines += ["", "## relFCs", ""]
    if r["n_with_value"]:
        q = r["quantiles"]
        lines += [
            "relFCs is the share of the image's first principal component (high = flat, low-detail), "
            "not a label confidence.",
            "",
            f"- range {r['min']:.3f} to {r['max']:.3f}; median {q['0.5']:.3f}; 1% / 99% quantiles "
            f"{q['0.01']:.3f} / {q['0.99']:.3f}",
            "- images dropped by a ceiling: "
            + ", ".join(f"{t}: {n:,}" for t, n in r["dropped_at_ceiling"].items()),
            "",
            "![relFCs](relfcs.png)",
        ]
    else:
        lines.append("No relFCs values (no labels.csv or no relFCs column).")
    s = a["split"]
    lines += [
        "",
        f"## Stored split (seed {s['seed']}, fractions {s['fractions']}, duplicate groups kept whole)",
        "",
        "| split | " + " | ".join(classes) + " | total |",
        "|---|" + "---|" * (len(classes) + 1),
    ]
    for name, counts in s["counts"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:,}" for v in counts.values()) + f" | {sum(counts.values()):,} |")
    lines += ["", "## Sample faces", "", "![contact sheet](contact_sheet.png)", ""]
    return "\n".join(lines)
