"""Where the face sits inside a training crop: the face-crop function's template, measured.

    python bench/measure_framing.py [--data ZIP] [--n 3000]

Runs MTCNN on AffectNet training crops (96x96, padded by half their side so that faces touching the border
are still found) and prints: the detection rate, the mean position of the five landmarks in crop coordinates
(the template that `emodetect.inference.crop` aligns photos to), the mean face box, and how much each crop's
own framing varies around the template (the framing jitter that training augmentation should cover),
separately for the JPEG (AffectNet) and PNG (FFHQ-derived) crops.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from emodetect.data import load_dataset
from emodetect.inference.faces import create_detector

ZIP = "../shared/data/affectnet/affectnet-training-data.zip"


def measure(images: np.ndarray, detector, pad: int = 48):
    marks, boxes = [], []
    for img in images:
        big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        faces = detector.detect(big)
        if faces and faces[0].landmarks is not None:
            f = faces[0]
            marks.append(f.landmarks - pad)
            x, y, w, h = f.box
            boxes.append((x - pad, y - pad, w, h))
    return np.array(marks), np.array(boxes)


def similarity_to(template: np.ndarray, pts: np.ndarray) -> tuple[float, float, float, float]:
    """(scale, angle in degrees, dx, dy of the centroid) of the least-squares similarity template -> pts."""
    a, b = template - template.mean(0), pts - pts.mean(0)
    za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    k = (np.conj(za) @ zb) / (np.conj(za) @ za)  # complex scale-and-rotation
    d = pts.mean(0) - template.mean(0)
    return float(abs(k)), float(np.degrees(np.angle(k))), float(d[0]), float(d[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=ZIP)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    ds = load_dataset(args.data, mode="rgb", cache_dir=args.cache_dir, progress=False).subset("train")
    pick = np.random.default_rng(0).choice(len(ds), min(args.n, len(ds)), replace=False)
    detector = create_detector("mtcnn", min_face_size=20, score_threshold=0.9)
    fmt = ds.manifest["format"][pick]
    found = np.zeros(len(pick), bool)  # which crops gave a face, for the per-format split below
    marks_all, boxes_all = [], []
    for i, img in enumerate(ds.images[pick]):
        m, b = measure(img[None], detector)
        if len(m):
            found[i] = True
            marks_all.append(m[0])
            boxes_all.append(b[0])
    marks_all, boxes_all = np.array(marks_all), np.array(boxes_all)
    print(f"{found.sum()} of {len(pick)} crops have a face ({100 * found.mean():.1f}%; JPEG "
          f"{100 * found[fmt == 'jpeg'].mean():.1f}%, PNG {100 * found[fmt == 'png'].mean():.1f}%)")
    names = ["left eye", "right eye", "nose", "left mouth", "right mouth"]
    for label, sel in (("all", np.ones(found.sum(), bool)), ("jpeg", fmt[found] == "jpeg"), ("png", fmt[found] == "png")):
        t = marks_all[sel].mean(0)
        print(f"\n{label}: {sel.sum()} crops; template (x, y in a 96x96 crop):")
        for n, (x, y) in zip(names, t):
            print(f"  {n:<12} {x:6.2f} {y:6.2f}")
        b = boxes_all[sel].mean(0)
        print(f"  mean box: x {b[0]:.1f} y {b[1]:.1f} w {b[2]:.1f} h {b[3]:.1f}")
    template = marks_all.mean(0)
    sims = np.array([similarity_to(template, m) for m in marks_all])
    print("\nframing of each crop around the template (the jitter that augmentation should cover):")
    for k, name in enumerate(("scale", "angle (deg)", "dx (px)", "dy (px)")):
        q = np.quantile(sims[:, k], [0.05, 0.5, 0.95])
        print(f"  {name:<12} median {q[1]:7.3f}   5%-95%: {q[0]:7.3f} .. {q[2]:7.3f}   std {sims[:, k].std():.3f}")
    print("\nTEMPLATE = np.float32(" + repr(np.round(template, 2).tolist()) + ")")


if __name__ == "__main__":
    main()
