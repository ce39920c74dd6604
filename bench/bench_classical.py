"""Time the classical track on the shared zip: PCA(1000) with each SVD solver, then fit + evaluate of
every classical pipeline on the stored split.

    python bench/bench_classical.py [--data ZIP] [--models logreg,...] [--skip-solvers]

Targets on 2 cores: PCA fit <= 60 s; the whole classical track (all models, fit + evaluate) <= 15 minutes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sklearn.decomposition import PCA

from emodetect.data import load_dataset
from emodetect.data.transforms import to_pixel_rows
from emodetect.models import get_spec
from emodetect.runs import train

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "affectnet" / "affectnet-training-data.zip"
MODELS = "logreg,logreg_raw,random_forest,mlp,hog_lbp_svm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA.resolve())
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--skip-solvers", action="store_true")
    args = parser.parse_args()
    ds = load_dataset(args.data, progress=False)
    tr = ds.subset("train")
    x = to_pixel_rows(tr.images, get_spec("logreg").preprocess)
    solver_rows = []
    if not args.skip_solvers:
        # "full" (LAPACK SVD of 17k x 9216) and "arpack" take many minutes here; they are timed on request only
        for solver in ("randomized", "covariance_eigh"):
            t = time.perf_counter()
            PCA(1000, svd_solver=solver, random_state=0).fit(x)
            solver_rows.append((solver, time.perf_counter() - t))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:  # --models "" times the PCA solvers only
            t = time.perf_counter()
            r = train(name, args.data, Path(tmp) / name, progress=False, log=lambda m: None)
            rows.append((name, r["train_seconds"], time.perf_counter() - t, r["val"]["accuracy"], r["val"]["macro_f1"]))
    print(f"\nPCA(1000) on {x.shape[0]:,} x {x.shape[1]:,} (target <= 60 s)")
    for solver, sec in solver_rows:
        print(f"  {solver:<16} {sec:>7.1f} s")
    print(f"\n{'pipeline':<16} {'fit s':>8} {'fit+eval s':>11} {'val acc':>8} {'val F1':>8}")
    for name, fit_s, total, acc, f1 in rows:
        print(f"{name:<16} {fit_s:>8.1f} {total:>11.1f} {acc:>8.3f} {f1:>8.3f}")
    print(f"{'total':<16} {sum(r[1] for r in rows):>8.1f} {sum(r[2] for r in rows):>11.1f}   (target <= 900 s)")


if __name__ == "__main__":
    main()
