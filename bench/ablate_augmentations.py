"""What each augmentation against shortcuts adds, measured on the validation splits of both datasets.

    python bench/ablate_augmentations.py --data affectnet=ZIP --data fer2013=ZIP [--epochs 5] [--size 64]

A reduced-scale study (EfficientNet-Lite0 at --size px, at most --per-class train images per class and dataset,
the full validation splits): the old geometric and colour augmentation alone ("none"), every new one on
("all"), "all" without each one in turn, and "all" with JPEG, low resolution and blur kept off the datasets after
the first (`augment_by_source`: FER2013's faces are small, gray and compressed already). Prints validation accuracy per dataset, the PNG-JPEG accuracy
gap on AffectNet's validation split, and validation accuracy under grayscale and 48 px low resolution.
The test splits are never looked at.
"""

from __future__ import annotations

import argparse
import time

import torch

from emodetect.config import DataConfig
from emodetect.evaluation.evaluate import split_metrics
from emodetect.evaluation.robustness import robustness
from emodetect.models.artifact import Artifact, describe
from emodetect.models.predict import Predictor
from emodetect.models.registry import resolve_model_config
from emodetect.runs import limit_per_class, load_splits
from emodetect.training import fit_network

NEW = {"grayscale": 0.2, "lowres": 0.3, "jpeg": 0.5, "blur": 0.2, "saturation": 0.3}


def variants(others: list[str]) -> dict[str, dict]:
    """Variant name -> train config overrides. `others`: the datasets after the first (AffectNet)."""
    out = {"none": {"augment": {}}, "all": {"augment": dict(NEW)}}
    for name in NEW:
        out[f"all - {name}"] = {"augment": {k: v for k, v in NEW.items() if k != name}}
    if others:  # the shortcut degradations on the first dataset only: the others' faces are small and gray already
        out["all - jpeg+lowres+blur on others"] = {
            "augment": dict(NEW), "augment_by_source": {s: {"jpeg": 0, "lowres": 0, "blur": 0} for s in others}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    _, tr, va, _ = load_splits(args.data, DataConfig(), "rgb", args.cache_dir, progress=False)
    tr = limit_per_class(tr, args.per_class)
    print(f"train {len(tr):,}, val {len(va):,} images; {torch.get_num_threads()} threads", flush=True)
    rows = []
    every = variants(list(dict.fromkeys(va.sources.tolist()))[1:])
    chosen = every if not args.only else {k: v for k, v in every.items() if k in args.only.split(",")}
    for name, overrides in chosen.items():
        cfg = resolve_model_config("efficientnet_lite0", {"image_size": args.size, "epochs": args.epochs, "lr": 2e-3,
                                                         "weight_decay": 0.05, "label_smoothing": 0.1, "patience": 99,
                                                         **overrides})  # fmt: skip
        t = time.perf_counter()
        fitted = fit_network(cfg, tr, va, progress=False, log=lambda m: None)
        predictor = Predictor(Artifact(fitted.model, describe("torch", cfg.name, cfg.preprocess, {"tta_flip": True})))
        m = split_metrics(va, proba := predictor.predict_proba(va.images))
        rob = robustness(predictor, va, ("grayscale", "lowres48"), clean=proba)
        fmt = m["by_source"]
        aff = next(iter(fmt))
        aff_val = va.subset(va.sources == aff)
        gap = split_metrics(aff_val, proba[va.sources == aff])["by_format"]
        rows.append((name, m["accuracy"], {s: v["accuracy"] for s, v in fmt.items()},
                     gap.get("png", {}).get("accuracy", float("nan")) - gap.get("jpeg", {}).get("accuracy", float("nan")),
                     rob["grayscale"]["accuracy"] - m["accuracy"], rob["lowres48"]["accuracy"] - m["accuracy"],
                     time.perf_counter() - t))  # fmt: skip
        print(f"  {name}: val {m['accuracy']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    sources = list(rows[0][2])
    print("\n| augmentation | val acc. | " + " | ".join(f"val {s}" for s in sources)
          + " | PNG - JPEG (points) | grayscale (points) | 48 px (points) | seconds |")  # fmt: skip
    print("|---|---|" + "---|" * len(sources) + "---|---|---|---|")
    for name, acc, per, gap, gray, low, sec in rows:
        print(f"| {name} | {acc:.4f} | " + " | ".join(f"{per[s]:.4f}" for s in sources)
              + f" | {100 * gap:+.1f} | {100 * gray:+.1f} | {100 * low:+.1f} | {sec:.0f} |")  # fmt: skip
    print(f"\nEfficientNet-Lite0 at {args.size} px, {args.epochs} epochs, <= {args.per_class} train images per class "
          "and dataset; full validation splits (test splits untouched)")  # fmt: skip


if __name__ == "__main__":
    main()
