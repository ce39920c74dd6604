"""`emodetect evaluate` on a foreign dataset: everything but the forward pass, and the forward pass beside it.

    python bench/bench_evaluate.py [--fer ../shared/data/fer2013/fer2013-train.zip] [--sizes 1000,all]

Builds datasets of 48x48 FER2013 faces at bench time (a subset is copied into a temporary zip; nothing is
kept), then times on a cold cache: reading + decoding + caching (no duplicate search: the data is only
evaluated), the model's forward pass, and metrics. Targets: <= 3 s for 1,000 images and <= 30 s for all
28,006, besides the forward pass.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from emodetect.data import load_datasets
from emodetect.evaluation.evaluate import split_metrics
from emodetect.models.artifact import resolve_artifact
from emodetect.models.predict import Predictor

FER = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fer2013" / "fer2013-train.zip"


def subset_zip(src: Path, n: int, dest: Path) -> Path:
    with zipfile.ZipFile(src) as z:
        names = sorted(i.filename for i in z.infolist() if not i.is_dir())
        keep = names[:: max(1, len(names) // n)][:n]
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
            for name in keep:
                out.writestr(name, z.read(name))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer", type=Path, default=FER.resolve())
    parser.add_argument("--sizes", default="1000,all")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    artifact = resolve_artifact(args.model)
    predictor = Predictor(artifact)
    predictor.predict_proba(np.zeros((8, 48, 48), np.uint8))  # warm-up: the first call builds the session
    print(f"model {artifact.name} ({artifact.preprocess.size} px {artifact.preprocess.mode}), "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            data = args.fer if size == "all" else subset_zip(args.fer, int(size), Path(tmp) / f"fer{size}.zip")
            cache = Path(tmp) / f"cache-{size}"
            t0 = time.perf_counter()
            ds = load_datasets(data, mode=artifact.preprocess.mode, cache_dir=cache, progress=False, split=False)
            t_data = time.perf_counter() - t0
            t0 = time.perf_counter()
            proba = predictor.predict_proba(ds.images)
            t_forward = time.perf_counter() - t0
            t0 = time.perf_counter()
            m = split_metrics(ds, proba)
            t_metrics = time.perf_counter() - t0
            rows.append((len(ds), t_data, t_metrics, t_forward, m["accuracy"]))
            print(f"  {len(ds):,} images done", flush=True)
    print("\n| images | read + decode + cache (s) | metrics (s) | all but the forward pass (s) | forward pass (s) | accuracy |")
    print("|---|---|---|---|---|---|")
    for n, d, mt, f, acc in rows:
        print(f"| {n:,} | {d:.2f} | {mt:.2f} | {d + mt:.2f} | {f:.1f} | {acc:.4f} |")
    print("\ncold cache, no duplicate search (evaluation only); targets: <= 3 s (1,000) and <= 30 s (28,006) "
          "besides the forward pass")


if __name__ == "__main__":
    main()
