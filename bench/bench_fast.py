"""The fast-inference table: the default and fast models on every backend, speed and accuracy side by side.

    python bench/bench_fast.py [--models default,fast] [--data affectnet=ZIP --data fer2013=ZIP]

For each model: plain PyTorch, the fused PyTorch path, ONNX Runtime fp32 and int8 (the graph that ships
beside the model, `emodetect ship --int8`, which `load_model` runs; or, with --int8, one quantised here as
`emodetect export --int8` does): batch-1 latency (median of 200 single faces), batch-256 throughput (faces/s, best of 5),
file size, and accuracy on the stored test splits of each dataset. Faces arrive at the model's input size, so
every backend gets the same pixels. Prints the CPU, the thread count and one markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from emodetect.config import DataConfig
from emodetect.data.transforms import to_uint8_input
from emodetect.models.artifact import resolve_artifact
from emodetect.models.export import export_onnx, onnx_session, shipped_int8
from emodetect.models.predict import Predictor, softmax
from emodetect.runs import calibrated_int8, load_splits

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DATA = [f"affectnet={SHARED / 'affectnet' / 'affectnet-training-data.zip'}", f"fer2013={SHARED / 'fer2013' / 'fer2013-train.zip'}"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_runner(art, backend: str):
    """`Predictor`'s own PyTorch path: "torch" (channels-last weights, the mirror as a second pass) or "fused"
    (batch norm and padding folded, the mirror in one batch of 2N); uint8 faces at the model's size in, logits out."""
    return Predictor(art, backend=backend).logits


def onnx_runner(data):
    session = onnx_session(data)
    return lambda x_u8: session.run(["logits"], {"images": x_u8})[0]


def speed(run, faces: np.ndarray) -> tuple[float, float]:
    """(batch-1 latency in ms, batch-256 faces per second)."""
    for _ in range(5):
        run(faces[:1])
    lat = []
    for i in range(200):
        t = time.perf_counter()
        run(faces[i % len(faces) : i % len(faces) + 1])
        lat.append(time.perf_counter() - t)
    batch = faces[:256] if len(faces) >= 256 else np.resize(faces, (256, *faces.shape[1:]))
    run(batch)
    best = min(_timed(run, batch) for _ in range(5))
    return 1000 * float(np.median(lat)), 256 / best


def _timed(run, batch) -> float:
    t = time.perf_counter()
    run(batch)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,fast")
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--int8", action="store_true", help="also quantise models that ship no int8 graph (slow: "
                        "calibration and a test pass)")  # fmt: skip
    args = parser.parse_args()
    data = args.data or DATA
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; torch {torch.__version__} with {torch.get_num_threads()} threads; "
          "ONNX Runtime with one thread per core", flush=True)  # fmt: skip
    rows = []
    for name in args.models.split(","):
        art = resolve_artifact(name)
        pre = art.preprocess
        _, train, _, test = load_splits(data, DataConfig(), pre.mode, args.cache_dir, progress=False)
        faces = to_uint8_input(test.images, pre)  # every backend gets these exact pixels
        onnx_bytes = export_onnx(art)
        runners = {"PyTorch": torch_runner(art, "torch"),
                   "PyTorch fused": torch_runner(art, "fused"),
                   "ONNX Runtime fp32": onnx_runner(onnx_bytes)}  # fmt: skip
        sizes = {"PyTorch": art.path.stat().st_size, "PyTorch fused": art.path.stat().st_size, "ONNX Runtime fp32": len(onnx_bytes)}
        shipped = shipped_int8(art)
        if shipped is not None:
            runners["ONNX Runtime int8 (shipped)"] = onnx_runner(shipped)
            sizes["ONNX Runtime int8 (shipped)"] = len(shipped)
        elif args.int8:
            q = calibrated_int8(art, onnx_bytes, train)
            runners["ONNX Runtime int8"] = onnx_runner(q)
            sizes["ONNX Runtime int8"] = len(q)
        for backend, run in runners.items():
            lat, thr = speed(run, faces)
            logits = np.concatenate([run(faces[s : s + 256]) for s in range(0, len(faces), 256)])
            pred = softmax(logits, art.temperature).argmax(1)
            acc = {s: float((pred == test.labels)[test.sources == s].mean()) for s in dict.fromkeys(test.sources.tolist())}
            rows.append((name, art.name, pre.size, backend, lat, thr, sizes[backend], acc))
            print(f"  {name} {backend}: {thr:,.0f} faces/s", flush=True)
    sources = list(rows[0][7])
    print("\n| model | network | input | backend | batch-1 latency (ms) | batch-256 faces/s | size (MB) | "
          + " | ".join(f"{s} test acc." for s in sources) + " |")  # fmt: skip
    print("|---|---|---|---|---|---|---|" + "---|" * len(sources))
    for name, net, size, backend, lat, thr, nbytes, acc in rows:
        print(f"| {name} | {net} | {size} | {backend} | {lat:.2f} | {thr:,.0f} | {nbytes / 1e6:.1f} | "
              + " | ".join(f"{acc[s]:.4f}" for s in sources) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
