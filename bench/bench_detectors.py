"""Score the face detectors on the shared WIDER FACE photos (`faces.zip`) by the protocol of its README.

    python bench/bench_detectors.py [--limit N] [--detectors mtcnn,haar] [--zip PATH]

Every detector runs on every image at the image's own resolution with no score cut-off. Positives are valid
faces with h >= 48 px; every other box is an ignore region. A detection with IoU >= 0.5 to an ignore region
counts as nothing; each remaining one, in score order, is a hit if its best IoU with a not-yet-matched
positive is >= 0.5, else a false positive. The score thresholds for <= 0.1 and <= 1 false positive per image
are chosen on the tuning half (sha256 starting with 0-7) and recall is reported on the other half. AP at
IoU 0.5 (easy / medium / hard, faces outside the setting ignored) needs no threshold: it is over all images.
Timing: mean detect() time per photo, and on a few photos cropped and resized to 640x480 and 1280x720.
Images are only read from the zip (never written anywhere): WIDER FACE is for non-commercial research only.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

from emodetect.inference.faces import DETECTORS, create_detector

ZIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "faces" / "faces.zip"
MIN_H = 48  # positives: valid faces at least this tall
BUDGETS = (0.1, 1.0)  # false positives per image
TIMING_SIZES = ((640, 480), (1280, 720))
N_TIMING = 5  # photos per timing size


# ------------------------------------------------------------------------------------------------- data


def read_set(path: Path) -> tuple[zipfile.ZipFile, list[dict], dict[str, list[dict]]]:
    """The zip, its images.csv rows and its boxes.csv rows grouped by file."""
    z = zipfile.ZipFile(path)
    images = list(csv.DictReader(io.TextIOWrapper(z.open("images.csv"), "utf-8")))
    boxes = defaultdict(list)
    for row in csv.DictReader(io.TextIOWrapper(z.open("boxes.csv"), "utf-8")):
        boxes[row["file"]].append(row)
    return z, images, boxes


def decode(z: zipfile.ZipFile, file: str) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(z.read("images/" + file), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def is_tuning(image: dict) -> bool:
    return image["sha256"][0] in "01234567"


def xywh(rows: list[dict]) -> np.ndarray:
    return np.array([[float(r[k]) for k in "xywh"] for r in rows], dtype=np.float64).reshape(-1, 4)


def split_truth(rows: list[dict], setting: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(P, 4) positives and (Q, 4) ignore regions: valid h >= 48 (setting None) or in the WIDER setting."""
    if setting is None:
        keep = [r["invalid"] == "0" and float(r["h"]) >= MIN_H for r in rows]
    else:
        keep = [r[setting] == "1" for r in rows]
    return xywh([r for r, k in zip(rows, keep) if k]), xywh([r for r, k in zip(rows, keep) if not k])


# ------------------------------------------------------------------------------------------------- scoring


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) x, y, w, h boxes -> (N, M) intersection over union."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    union = a[:, None, 2:].prod(2) + b[None, :, 2:].prod(2) - inter
    return inter / np.maximum(union, 1e-9)


def match(dets: np.ndarray, positives: np.ndarray, ignore: np.ndarray, thr: float = 0.5) -> np.ndarray:
    """(K, 5) x, y, w, h, score detections of one image -> (K,) 1 hit, 0 false positive, -1 ignored."""
    labels = np.zeros(len(dets), dtype=np.int8)
    if len(dets) == 0:
        return labels
    ignored = (iou(dets[:, :4], ignore) >= thr).any(1) if len(ignore) else np.zeros(len(dets), bool)
    overlap = iou(dets[:, :4], positives) if len(positives) else np.zeros((len(dets), 0))
    free = np.ones(len(positives), dtype=bool)
    for k in np.argsort(-dets[:, 4], kind="stable"):
        if ignored[k]:
            labels[k] = -1
            continue
        cand = np.where(free, overlap[k], -1.0)
        if len(cand) and cand.max() >= thr:
            free[cand.argmax()] = False
            labels[k] = 1
    return labels


def pooled(dets: dict[str, np.ndarray], truth: dict[str, tuple], files) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and labels of the scored (not ignored) detections of these files, and the number of positives."""
    scores, labels, n_pos = [np.zeros(0)], [np.zeros(0, np.int8)], 0
    for f in files:
        pos, ign = truth[f]
        lab = match(dets[f], pos, ign)
        scores.append(dets[f][lab >= 0, 4])
        labels.append(lab[lab >= 0])
        n_pos += len(pos)
    return np.concatenate(scores), np.concatenate(labels), n_pos


def threshold_at(scores: np.ndarray, labels: np.ndarray, n_images: int, budget: float) -> float:
    """The lowest score cut-off (keep score >= it) with at most budget false positives per image; inf if none."""
    best = float("inf")
    for s in np.unique(scores)[::-1]:
        if (labels[scores >= s] == 0).sum() > budget * n_images:
            break
        best = float(s)
    return best


def recall_at(scores, labels, n_pos, n_images, t) -> tuple[float, float]:
    """Recall and false positives per image when keeping scores >= t."""
    kept = labels[scores >= t]
    return (kept == 1).sum() / max(n_pos, 1), (kept == 0).sum() / max(n_images, 1)


def average_precision(scores: np.ndarray, labels: np.ndarray, n_pos: int) -> float:
    """Area under the precision-recall curve, precision made monotone (VOC / WIDER all-point interpolation)."""
    if n_pos == 0 or len(scores) == 0:
        return float("nan")
    hits = labels[np.argsort(-scores, kind="stable")] == 1
    tp = np.cumsum(hits)
    recall = np.concatenate([[0.0], tp / n_pos])
    precision = np.concatenate([[1.0], tp / np.arange(1, len(tp) + 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


# ------------------------------------------------------------------------------------------------- runs


def as_array(faces) -> np.ndarray:
    return np.array([[*f.box, f.score] for f in faces], dtype=np.float64).reshape(-1, 5)


def run_detector(name: str, z, images: list[dict]) -> tuple[dict[str, np.ndarray], float]:
    """Detections (K, 5) per file with no score cut-off, and the mean ms per image."""
    det = create_detector(name, score_threshold=None)
    det.detect(decode(z, images[0]["file"]))  # warm-up: loads weights / cascade
    dets, total = {}, 0.0
    for i, image in enumerate(images):
        rgb = decode(z, image["file"])
        t = time.perf_counter()
        dets[image["file"]] = as_array(det.detect(rgb))
        total += time.perf_counter() - t
        print(f"\r{name}: {i + 1}/{len(images)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return dets, 1000 * total / len(images)


def fit(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop to the aspect of size (w, h), then resize to it."""
    h, w = rgb.shape[:2]
    tw, th = size
    cw, ch = min(w, round(h * tw / th)), min(h, round(w * th / tw))
    x, y = (w - cw) // 2, (h - ch) // 2
    return cv2.resize(rgb[y : y + ch, x : x + cw], size, interpolation=cv2.INTER_AREA)


def time_at(name: str, photos: list[np.ndarray], size: tuple[int, int]) -> float:
    det = create_detector(name, score_threshold=None)
    frames = [fit(p, size) for p in photos]
    det.detect(frames[0])  # warm-up
    t = time.perf_counter()
    for f in frames:
        det.detect(f)
    return 1000 * (time.perf_counter() - t) / len(frames)


def score_detector(dets, truths, tune, report, all_files) -> dict:
    """Thresholds on the tuning files, recall on the report files, AP per setting on all files."""
    out = {}
    ts, tl, _ = pooled(dets, truths[None], tune)
    rs, rl, rp = pooled(dets, truths[None], report)
    for b in BUDGETS:
        t = threshold_at(ts, tl, len(tune), b)
        out[b] = (t, *recall_at(rs, rl, rp, len(report), t))
    for setting in ("easy", "medium", "hard"):
        out[setting] = average_precision(*pooled(dets, truths[setting], all_files))
    return out


def table(rows: list[tuple[str, dict, float, list[float]]], n_tune, n_report, n_pos, n_all) -> str:
    head = (
        "| detector | recall @ <=0.1 FP/img (FP/img) | threshold | recall @ <=1 FP/img (FP/img) | threshold "
        "| AP easy | AP medium | AP hard | ms/img (own size) | ms/img 640x480 | ms/img 1280x720 |"
    )
    lines = [head, "|" + "---|" * 11]
    for name, r, ms, ms_sizes in rows:
        cells = [name]
        for b in BUDGETS:
            t, rec, fp = r[b]
            cells += [f"{100 * rec:.1f}% ({fp:.2f})", f"{t:.6g}"]
        cells += [f"{r[s]:.3f}" for s in ("easy", "medium", "hard")]
        cells += [f"{ms:.0f}"] + [f"{m:.0f}" for m in ms_sizes]
        lines.append("| " + " | ".join(cells) + " |")
    caption = (
        f"Thresholds chosen on the tuning half ({n_tune} images, sha256 0-7); recall and FP/img reported on the "
        f"other half ({n_report} images, {n_pos} valid faces with h >= {MIN_H}). AP at IoU 0.5 over all {n_all} "
        f"images. ms: mean detect() time, {torch.get_num_threads()} torch threads, images at their own size "
        f"(1024 px wide) and {N_TIMING} photos cropped and resized to 640x480 and 1280x720."
    )
    return "\n".join(lines) + "\n\n" + caption


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zip", type=Path, default=ZIP.resolve())
    p.add_argument("--limit", type=int, default=None, help="score only the first N images (a quick run)")
    p.add_argument("--detectors", default=",".join(DETECTORS))
    args = p.parse_args(argv)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch threads: {torch.get_num_threads()}, OpenCV threads: {cv2.getNumThreads()}, load average: {load}")
    z, images, boxes = read_set(args.zip)
    images = images[: args.limit] if args.limit else images
    files = [im["file"] for im in images]
    tune = [im["file"] for im in images if is_tuning(im)]
    report = [im["file"] for im in images if not is_tuning(im)]
    truths = {s: {f: split_truth(boxes[f], s) for f in files} for s in (None, "easy", "medium", "hard")}
    n_pos = sum(len(truths[None][f][0]) for f in report)
    photos = [decode(z, f) for f in (report or files)[:N_TIMING]]
    rows = []
    for name in args.detectors.split(","):
        dets, ms = run_detector(name, z, images)
        ms_sizes = [time_at(name, photos, size) for size in TIMING_SIZES]
        rows.append((name, score_detector(dets, truths, tune, report, files), ms, ms_sizes))
    print(table(rows, len(tune), len(report), n_pos, len(files)))


if __name__ == "__main__":
    main()
