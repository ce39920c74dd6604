"""`emodetect predict` speed: detectors alone, photos end to end, and video, on 2 cores.

    python bench/bench_predict.py [--model default] [--seconds 8]

Inputs are assembled at bench time from the shared AffectNet crops (faces enlarged and pasted onto smooth
backgrounds; nothing is kept): 640x480 and 1280x720 photos with one face, 1280x720 photos with ten faces,
and a 640x360 video of two moving faces at 25 frames/s. Prints one table. Targets: single-face photos >= 15
per second; a 640x360 video with one or two faces faster than real time at --fps 25 (>= 25 frames/s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch

from emodetect.data.decode import decode_rgb
from emodetect.inference.analyze import Analyzer
from emodetect.inference.faces import create_detector
from emodetect.inference.video import analyze_video

ZIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "affectnet" / "affectnet-training-data.zip"


def crops(n: int) -> list[np.ndarray]:
    with zipfile.ZipFile(ZIP.resolve()) as z:
        names = sorted(x for x in z.namelist() if x.endswith(".jpg"))[::97][:n]
        return [decode_rgb(z.read(x)) for x in names]


def photo(faces: list[np.ndarray], w: int, h: int, side: int, rng) -> np.ndarray:
    canvas = cv2.GaussianBlur(np.clip(rng.normal(120, 40, (h, w, 3)), 0, 255).astype(np.uint8), (0, 0), 6)
    cols = max(1, int(np.ceil(np.sqrt(len(faces) * w / h))))
    for k, f in enumerate(faces):
        cx = (k % cols + 0.5) * w / cols
        cy = (k // cols + 0.5) * h / int(np.ceil(len(faces) / cols))
        big = cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC)
        x, y = int(cx - side / 2), int(cy - side / 2)
        canvas[y : y + side, x : x + side] = big
    return canvas


def rate(fn, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    faces = crops(12)
    one_vga, one_hd = photo(faces[:1], 640, 480, 220, rng), photo(faces[:1], 1280, 720, 300, rng)
    ten_hd = photo(faces[:10], 1280, 720, 130, rng)
    print(f"torch threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}", flush=True)
    rows = []
    for name in ("mtcnn", "haar"):
        det = create_detector(name, min_face_size=40)
        for label, img in (("640x480", one_vga), ("1280x720", one_hd)):
            rows.append((f"detector {name}, {label}", f"{1000 / rate(lambda det=det, img=img: det.detect(img), args.seconds):.1f} ms/image"))
    analyzer = Analyzer(args.model)
    for label, img, n in (("photo 640x480, 1 face", one_vga, 1), ("photo 1280x720, 1 face", one_hd, 1),
                          ("photo 1280x720, 10 faces", ten_hd, 10)):  # fmt: skip
        found = len(analyzer.analyze(img))
        r = rate(lambda img=img: analyzer.analyze(img), args.seconds)
        rows.append((f"{label} (found {found}/{n})", f"{r:.1f} photos/s"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 360))
        a, b = (cv2.resize(f, (140, 140), interpolation=cv2.INTER_CUBIC) for f in faces[:2])
        for i in range(250):  # 10 s of video
            frame = np.full((360, 640, 3), 70, np.uint8)
            frame[110:250, 20 + i : 160 + i] = a
            frame[110:250, 480 - i : 620 - i] = b
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        for k in (1, 2, 3):
            t0 = time.perf_counter()
            n = sum(1 for _ in analyze_video(path, analyzer, fps=25, detect_every=k))
            rows.append((f"video 640x360, 2 faces, --fps 25, detect every {k}", f"{n / (time.perf_counter() - t0):.1f} frames/s"))
    print("\n| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nmodel {analyzer.predictor.artifact.name} ({args.model}); targets: >= 15 single-face photos/s, >= 25 video frames/s")


if __name__ == "__main__":
    main()
