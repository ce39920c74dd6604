"""Time the networks on this CPU: seconds per training epoch (batch 64), images/s at inference (batch 256),
and the cost of on-the-fly augmentation against pre-augmented tensors.

    python bench/bench_networks.py [--batches 20] [--models cnn_seed,resnet,...] [--bf16]

Epoch time is extrapolated from `--batches` timed training steps (after 2 warm-up steps) to the 17,490
train images of the shared split. Set the malloc variables below before Python starts for the tuned numbers:
MALLOC_MMAP_THRESHOLD_=1000000000000 MALLOC_TRIM_THRESHOLD_=1000000000000 MALLOC_TOP_PAD_=1073741824
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from emodetect.data.transforms import augment_batch
from emodetect.models import create_model
from emodetect.models.predict import predict_logits
from emodetect.models.registry import resolve_model_config
from emodetect.training.loop import masked_cross_entropy

N_TRAIN = 17_490
DEFAULT_MODELS = "cnn_seed,resnet,mini_xception,efficientnet_lite0@96,efficientnet_lite0@112"  # name[@input size]


def train_steps(model, model_cfg, batches, x_u8, y, pre_augmented=None) -> float:
    """Median seconds per training step; with pre_augmented, the batches are ready-made tensors."""
    cfg, pre = model_cfg.params, model_cfg.preprocess
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    aug = cfg.augmentation()
    g = torch.Generator().manual_seed(0)
    times = []
    model.train()
    for i in range(batches + 2):
        t = time.perf_counter()
        x = pre_augmented[i % len(pre_augmented)] if pre_augmented is not None else augment_batch(x_u8, pre, aug, g)
        if model_cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            out = model(x)
        loss = masked_cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast only with native CPU support)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, malloc tuned: {'MALLOC_TOP_PAD_' in os.environ}")  # fmt: skip
    rows = []
    for entry in args.models.split(","):
        name, _, size = entry.partition("@")
        model_cfg = resolve_model_config(name, {"bf16": args.bf16, "image_size": int(size) if size else None})
        cfg, pre = model_cfg.params, model_cfg.preprocess
        model = create_model(name, pretrained=False)
        if model_cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        x_u8 = torch.randint(0, 256, (64, pre.channels, 96, 96), dtype=torch.uint8)  # the cache's size
        y = torch.randint(0, 8, (64,))
        step = train_steps(model, model_cfg, args.batches, x_u8, y)
        ready = [augment_batch(x_u8, pre, cfg.augmentation()) for _ in range(4)]
        step_ready = train_steps(model, model_cfg, args.batches, x_u8, y, pre_augmented=ready)
        imgs = torch.randint(0, 256, (1024, pre.channels, 96, 96), dtype=torch.uint8)
        predict_logits(model, imgs[:256], pre)  # warm-up
        t = time.perf_counter()
        predict_logits(model, imgs, pre, batch_size=256)
        ips = len(imgs) / (time.perf_counter() - t)
        n_params = sum(p.numel() for p in model.parameters())
        rows.append((entry, pre.size, n_params, step * N_TRAIN / 64, step_ready * N_TRAIN / 64, ips))
        print(f"  measured {entry}", flush=True)
    print(f"\n{'network':<20} {'input':>5} {'params':>9} {'s/epoch':>9} {'pre-aug':>9} {'overhead':>9} {'infer img/s':>12}")
    for name, size, n, ep, ep_ready, ips in rows:
        print(f"{name:<20} {size:>5} {n:>9,} {ep:>9.0f} {ep_ready:>9.0f} {100 * (ep / ep_ready - 1):>8.1f}% {ips:>12,.0f}")
    print("\ns/epoch: on-the-fly batched augmentation; pre-aug: the same steps on ready tensors (target overhead <= 15%)")


if __name__ == "__main__":
    main()
