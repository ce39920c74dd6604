"""Time the data layer on the shared zip: cold ingest, warm cache load, and the naive per-file approach.

    python bench/bench_ingest.py [--data ../shared/data/affectnet/affectnet-training-data.zip]

Targets on 2 cores: cold ingest <= 60 s, warm load <= 1 s.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from emodetect.data import load_dataset

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "affectnet" / "affectnet-training-data.zip"


def naive(data: Path) -> np.ndarray:
    """What a notebook does: open every file with Pillow, convert, np.array, stack."""
    out = []
    with zipfile.ZipFile(data) as z:
        for name in z.namelist():
            if name.lower().endswith((".jpg", ".png")):
                with Image.open(io.BytesIO(z.read(name))) as im:
                    out.append(np.array(im.convert("L").resize((96, 96))))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA.resolve())
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        ds = load_dataset(args.data, cache_dir=cache, progress=False)
        cold = time.perf_counter() - t
        index = json.loads((Path(ds.info["cache"]) / "index.json").read_text())
        rows.append(("cold ingest (decode + dedup + split + write)", cold, len(ds), "<= 60 s"))
        rows.append(("  of which decode", index["seconds_decode"], len(ds), ""))
        rows.append(("  of which duplicate search", index["seconds_dedup"], len(ds), ""))
        warm = []
        for _ in range(3):
            t = time.perf_counter()
            load_dataset(args.data, cache_dir=cache, progress=False)
            warm.append(time.perf_counter() - t)
        rows.append(("warm cache load (best of 3)", min(warm), len(ds), "<= 1 s"))
        t = time.perf_counter()
        rgb = load_dataset(args.data, cache_dir=cache, mode="rgb", progress=False)
        rows.append(("second colour mode (rgb) from the same index", time.perf_counter() - t, len(rgb), ""))
    t = time.perf_counter()
    arr = naive(args.data)
    rows.append(("naive: Pillow open + convert + np.array per file", time.perf_counter() - t, len(arr), ""))

    print(f"\n{'step':<50} {'seconds':>9} {'images':>8} {'img/s':>9}  target")
    for name, sec, n, target in rows:
        rate = f"{n / sec:,.0f}" if not name.startswith("  ") else ""
        print(f"{name:<50} {sec:>9.2f} {n:>8,} {rate:>9}  {target}")


if __name__ == "__main__":
    main()
