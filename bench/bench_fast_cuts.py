"""How fast each cut of EfficientNet-Lite0 runs as the fast model would ship it: an int8 ONNX graph.

    python bench/bench_fast_cuts.py [--cuts 9@76,13@80,16@64] [--head 512]

Each cut is `blocks@input size`: the stem and first `blocks` blocks of `fastlite`, a 1x1 head and a linear
layer, random weights, exported and statically quantised exactly as `emodetect ship --int8` does (calibrated
on random faces: speed does not depend on the weights). Prints batch-1 latency (median of 200 faces),
batch-256 throughput (best of 5), parameters and the size of the float16 weights and of the int8 graph, as
one markdown table. Run it on an otherwise idle machine: a training job beside it halves every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import torch

from bench_fast import cpu_name, onnx_runner, speed
from emodetect.models import create_model
from emodetect.models.artifact import Artifact, describe
from emodetect.models.efficientnet_lite import FASTLITE_INPUT
from emodetect.models.export import export_onnx, quantize_int8

DEFAULT_CUTS = "9@76,11@80,12@80,13@80,13@88,16@64,16@80"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", default=DEFAULT_CUTS, help="blocks@size, comma-separated")
    parser.add_argument("--head", type=int, default=512, help="width of the 1x1 head (Lite0's own is 1280)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; ONNX Runtime int8 with one thread per core", flush=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    for cut in args.cuts.split(","):
        blocks, size = (int(v) for v in cut.split("@"))
        model = create_model("fastlite", pretrained=False, blocks=blocks, head=args.head).eval()
        pre = dataclasses.replace(FASTLITE_INPUT, size=size)
        art = Artifact(model, describe("torch", "fastlite", pre, {"model_kwargs": {"blocks": blocks, "head": args.head}}))
        faces = rng.integers(0, 256, (256, size, size, 3), dtype=np.uint8)
        graph = quantize_int8(export_onnx(art), faces[:128])
        latency, throughput = speed(onnx_runner(graph), faces)
        params = sum(p.numel() for p in model.parameters())
        rows.append((blocks, size, params, latency, throughput, 2 * params, len(graph)))
        print(f"  {blocks} blocks at {size} px: {throughput:,.0f} faces/s", flush=True)
    print("\n| blocks | input | parameters | batch-1 latency (ms) | batch-256 faces/s | float16 weights (MB) | int8 graph (MB) |")
    print("|---|---|---|---|---|---|---|")
    for blocks, size, params, latency, throughput, fp16, int8 in rows:
        print(f"| {blocks} | {size} | {params / 1e6:.2f}M | {latency:.2f} | {throughput:,.0f} | {fp16 / 1e6:.1f} | {int8 / 1e6:.1f} |")


if __name__ == "__main__":
    main()
