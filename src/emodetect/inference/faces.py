"""Offline face detectors for photos: MTCNN (default) and OpenCV's Haar cascade (fast fallback).

MTCNN (Zhang et al., 2016) is a plain-torch port of facenet-pytorch 2.6.0 (`models/mtcnn.py`,
`models/utils/detect_face.py`, MIT licence): same three networks, same cascade, same defaults. Its weights
(`pnet.pt`, `rnet.pt`, `onet.pt` from the facenet-pytorch wheel) were converted once with
`convert_facenet_weights` into `weights/mtcnn.safetensors`, which ships with this package together with
the MIT notice (`weights/LICENSE-facenet-pytorch.txt`); facenet-pytorch itself is never imported.

    from emodetect.inference.faces import create_detector
    faces = create_detector("mtcnn").detect(rgb)   # rgb: uint8 (H, W, 3)

Default score thresholds were tuned with `bench/bench_detectors.py` on WIDER FACE validation photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn

from emodetect.errors import EmodetectError

DETECTORS = ("mtcnn", "haar")
WEIGHTS = "mtcnn.safetensors"
#: final score cut-offs, from bench/bench_detectors.py: the lowest score with <= 0.1 false positives per image on
#: the tuning half of the WIDER FACE photos (0.949565 and 5.95921, rounded down)
DEFAULT_SCORE_THRESHOLD = {"mtcnn": 0.9495, "haar": 5.959}


@dataclass(frozen=True)
class Detection:
    """One detection, in pixels of the input image (the box may reach past the image border)."""

    box: tuple[float, float, float, float]  # x, y, w, h
    score: float
    landmarks: np.ndarray | None = None  # (5, 2) x, y: left eye, right eye, nose, left/right mouth corner


# ----------------------------------------------------------------------------------------------- networks


def pool(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Caffe's max pooling (ceil mode), in channels-last memory: several times faster on CPU than NCHW."""
    return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel, stride, ceil_mode=True)


class PNet(nn.Module):
    """Proposal net, fully convolutional, stride 2 over 12x12 windows."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x):  # (N, 3, H, W) -> (N, 4, H', W') offsets, (N, H', W') face probability
        x = pool(self.prelu1(self.conv1(x)), 2, 2)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):  # (N, 3, 24, 24) -> (N, 4) offsets, (N,) face probability
        x = pool(self.prelu1(self.conv1(x)), 3, 2)
        x = pool(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu3(self.conv3(x))  # (N, 64, 3, 3)
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))  # Caffe's (W, H, C) flattening order
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops, with five landmarks."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):  # (N, 3, 48, 48) -> (N, 4) offsets, (N, 10) landmarks x5 then y5, (N,) face probability
        x = pool(self.prelu1(self.conv1(x)), 3, 2)
        x = pool(self.prelu2(self.conv2(x)), 3, 2)
        x = pool(self.prelu3(self.conv3(x)), 2, 2)
        x = self.prelu4(self.conv4(x))  # (N, 128, 3, 3)
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)[:, 1]


def convert_facenet_weights(facenet_data_dir) -> dict[str, torch.Tensor]:
    """The one-off conversion: facenet-pytorch's `data/{pnet,rnet,onet}.pt` -> one flat float32 state dict.

    safetensors.torch.save_file(convert_facenet_weights(".../facenet_pytorch/data"), ".../mtcnn.safetensors")
    """
    out = {}
    for net in ("pnet", "rnet", "onet"):
        state = torch.load(Path(facenet_data_dir) / f"{net}.pt", map_location="cpu", weights_only=True)
        out.update({f"{net}.{k}": v.float().contiguous() for k, v in state.items()})
    return out


def load_mtcnn_nets() -> tuple[PNet, RNet, ONet]:
    """The three networks with the shipped weights, in eval mode."""
    state = load_safetensors(resources.files("emodetect.weights").joinpath(WEIGHTS).read_bytes())
    nets = PNet(), RNet(), ONet()
    for prefix, net in zip(("pnet.", "rnet.", "onet."), nets):
        net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        net.eval()
    return nets


# ----------------------------------------------------------------------------------------------- cascade


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Greedy NMS on (K, 4) x1, y1, x2, y2 boxes -> kept indices, best score first.

    "union": IoU > threshold suppresses (torchvision's nms); "min": intersection / smaller area, +1 pixel sizes
    (the original MTCNN's final step).
    """
    b, s = boxes.numpy().astype(np.float64), scores.numpy()
    plus = 1.0 if mode == "min" else 0.0
    area = (b[:, 2] - b[:, 0] + plus) * (b[:, 3] - b[:, 1] + plus)  # (K,)
    # ties (scores of exactly 1.0 are common) broken like the original: torchvision sorts stably, MTCNN's
    # numpy "min" NMS takes the last of np.argsort's ascending order
    order, keep = (np.argsort(s)[::-1] if mode == "min" else np.argsort(-s, kind="stable")), []
    while order.size:
        i, rest = order[0], order[1:]
        iw = np.maximum(0.0, np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]) + plus)
        ih = np.maximum(0.0, np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]) + plus)
        inter = iw * ih  # (len(rest),)
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        keep.append(i)
        order = rest[~(inter > threshold * denom)]
    return torch.as_tensor(np.array(keep, dtype=np.int64))


def pyramid(h: int, w: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which a 12-pixel P-Net window sees faces from min_face_size up to the image's short side."""
    scale, side, scales = 12.0 / min_face_size, min(h, w) * 12.0 / min_face_size, []
    while side >= 12:
        scales.append(scale)
        scale, side = scale * factor, side * factor
    return scales


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125  # [0, 255] -> [-1, 1)


def proposals(reg: torch.Tensor, prob: torch.Tensor, scale: float, threshold: float) -> torch.Tensor:
    """P-Net map (4, H', W') offsets, (H', W') probability -> (K, 9): x1, y1, x2, y2, score, 4 offsets."""
    mask = prob >= threshold
    xy = mask.nonzero().flip(1).to(reg.dtype)  # (K, 2) cell x, y
    q1 = ((2 * xy + 1) / scale).floor()  # stride 2, 12x12 cell, in image pixels
    q2 = ((2 * xy + 12) / scale).floor()
    return torch.cat([q1, q2, prob[mask][:, None], reg[:, mask].T], 1)


def rerec(boxes: torch.Tensor) -> torch.Tensor:
    """(K, 5+) boxes -> squares with the same centre and the longer side."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.cat([torch.stack([x1, y1, x1 + side, y1 + side], 1), boxes[:, 4:]], 1)


def bbreg(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """(K, 5) boxes moved by (K, 4) offsets in units of the +1-pixel box size."""
    wh = (boxes[:, 2:4] - boxes[:, 0:2] + 1).repeat(1, 2)  # (K, 4)
    return torch.cat([boxes[:, :4] + reg * wh, boxes[:, 4:5]], 1)


def integral(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 image -> (H + 1, W + 1, 3) float64 summed-area table (exact for 8-bit pixel values)."""
    return torch.from_numpy(cv2.integral(np.ascontiguousarray(rgb), sdepth=cv2.CV_64F))


def bins(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,) pixel ranges [lo, hi) -> (K, n) start and end of each output cell, as adaptive_avg_pool2d splits them."""
    i, size = torch.arange(n), (hi - lo)[:, None]
    return lo[:, None] + i * size // n, lo[:, None] + ((i + 1) * size + n - 1) // n


def area_resize(sat: torch.Tensor, x1, y1, x2, y2, out_h: int, out_w: int) -> torch.Tensor:
    """Regions [y1, y2) x [x1, x2) (each (K,) int64) -> (K, 3, out_h, out_w) float32 means over each cell.

    Equal to F.interpolate(crop, (out_h, out_w), mode="area") per region, but in a few batched gathers from the
    summed-area table instead of one call per crop.
    """
    ys, ye = bins(y1, y2, out_h)  # (K, out_h)
    xs, xe = bins(x1, x2, out_w)  # (K, out_w)

    def at(yy, xx):  # (K, out_h), (K, out_w) -> (K, out_h, out_w, 3) table values at the corners
        return sat[yy[:, :, None], xx[:, None, :]]

    total = at(ye, xe).sub_(at(ys, xe)).sub_(at(ye, xs)).add_(at(ys, xs))
    count = (ye - ys)[:, :, None, None] * (xe - xs)[:, None, :, None]  # (K, out_h, out_w, 1)
    return (total / count).float().permute(0, 3, 1, 2)


def resize_whole(sat: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """The whole image -> (1, 3, out_h, out_w): area_resize of one region, done separably (rows, then columns)."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    ys, ye = bins(torch.tensor([0]), torch.tensor([h]), out_h)
    xs, xe = bins(torch.tensor([0]), torch.tensor([w]), out_w)
    rows = sat.index_select(0, ye[0]) - sat.index_select(0, ys[0])  # (out_h, W + 1, 3) row-band sums so far
    total = rows.index_select(1, xe[0]) - rows.index_select(1, xs[0])  # (out_h, out_w, 3)
    count = (ye - ys)[0, :, None, None] * (xe - xs)[0, None, :, None]
    return (total / count).float().permute(2, 0, 1)[None]


def crops(sat: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H + 1, W + 1, 3) summed-area table, (K, 5) boxes -> (K', 3, size, size) normalised crops, (K',) their rows.

    Like facenet-pytorch, boxes are truncated to integers and clipped to the image (no zero padding: a crop
    at the border is stretched to the square); boxes that lie wholly outside are dropped.
    """
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    b = boxes[:, :4].trunc().long()  # (K, 4) 1-based, inclusive x1, y1, x2, y2
    x1, y1 = b[:, 0].clamp(min=1) - 1, b[:, 1].clamp(min=1) - 1  # 0-based start
    x2, y2 = b[:, 2].clamp(max=w), b[:, 3].clamp(max=h)  # exclusive end
    ok = ((x2 > x1) & (y2 > y1)).nonzero()[:, 0]
    return normalise(area_resize(sat, x1[ok], y1[ok], x2[ok], y2[ok], size, size)), ok


def propose(sat: torch.Tensor, pnet: PNet, min_face_size: float, threshold: float, factor: float) -> torch.Tensor:
    """Stage 1: P-Net over the pyramid, NMS per scale (IoU 0.5) then over all (0.7) -> (K, 5) squares + score."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    found = [sat.new_zeros(0, 9, dtype=torch.float32)]
    for scale in pyramid(h, w, min_face_size, factor):
        x = normalise(resize_whole(sat, int(h * scale + 1), int(w * scale + 1)))  # (1, 3, H', W')
        reg, prob = pnet(x)  # (1, 4, H', W'), (1, H', W')
        boxes = proposals(reg[0], prob[0], scale, threshold)  # (K, 9)
        found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
    boxes = torch.cat(found)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    wh = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)  # (K, 4): this first regression has no +1
    return rerec(torch.cat([boxes[:, :4] + boxes[:, 5:9] * wh, boxes[:, 4:5]], 1))


def refine(sat: torch.Tensor, boxes: torch.Tensor, rnet: RNet, threshold: float) -> torch.Tensor:
    """Stage 2: R-Net on 24x24 crops of (K, 5) boxes, NMS (IoU 0.7), regression -> (K', 5) squares + score."""
    x, keep = crops(sat, boxes, 24)  # (K, 3, 24, 24)
    reg, prob = rnet(x)  # (K, 4), (K,)
    ok = prob > threshold
    boxes, reg = torch.cat([boxes[keep][ok, :4], prob[ok, None]], 1), reg[ok]
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    return rerec(bbreg(boxes[pick], reg[pick]))


def output(sat: torch.Tensor, boxes: torch.Tensor, onet: ONet, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3: O-Net on 48x48 crops, regression, NMS ("min", 0.7) -> (K', 5) boxes + score, (K', 5, 2) points."""
    x, keep = crops(sat, boxes, 48)  # (K, 3, 48, 48)
    reg, marks, prob = onet(x)  # (K, 4), (K, 10), (K,)
    ok = prob > threshold
    boxes, reg, marks = torch.cat([boxes[keep][ok, :4], prob[ok, None]], 1), reg[ok], marks[ok]
    wh = boxes[:, None, 2:4] - boxes[:, None, 0:2] + 1  # (K, 1, 2): landmarks are relative to the crop
    points = torch.stack([marks[:, :5], marks[:, 5:]], 2) * wh + boxes[:, None, 0:2] - 1  # (K, 5, 2)
    boxes = bbreg(boxes, reg)
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
    return boxes[pick], points[pick]


def detect_mtcnn(rgb: np.ndarray, nets, min_face_size=20.0, thresholds=(0.6, 0.7, 0.7), factor=0.709):
    """The cascade on one uint8 (H, W, 3) image -> (K, 5) x1, y1, x2, y2, score; (K, 5, 2) landmarks x, y."""
    pnet, rnet, onet = nets
    sat = integral(rgb)
    boxes = propose(sat, pnet, min_face_size, thresholds[0], factor)
    if len(boxes):
        boxes = refine(sat, boxes, rnet, thresholds[1])
    if len(boxes) == 0:
        return boxes, boxes.new_zeros(0, 5, 2)
    return output(sat, boxes, onet, thresholds[2])


# ----------------------------------------------------------------------------------------------- detectors


class Detector:
    """Common part: input checks, optional downscaling, score cut-off, sorting. Subclasses implement _detect."""

    name = ""
    OPTIONS = ("min_face_size", "score_threshold", "max_side")

    def __init__(self, min_face_size: float, score_threshold: float | None, max_side: int | None):
        self.min_face_size = min_face_size
        self.score_threshold = score_threshold  # None keeps every detection
        self.max_side = max_side  # longer sides above it are downscaled first; min_face_size applies after that

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in a uint8 (H, W, 3) RGB image, best score first."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise EmodetectError(f"face detection needs a uint8 (H, W, 3) RGB array, got {_describe(rgb)}")
        h, w = rgb.shape[:2]
        small = rgb
        if self.max_side and max(h, w) > self.max_side:
            k = self.max_side / max(h, w)
            small = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        faces = self._detect(np.ascontiguousarray(small))
        if self.score_threshold is not None:
            faces = [f for f in faces if f.score >= self.score_threshold]
        if small is not rgb:
            faces = [_rescale(f, w / small.shape[1], h / small.shape[0]) for f in faces]
        return sorted(faces, key=lambda f: -f.score)

    def _detect(self, rgb: np.ndarray) -> list[Detection]:
        raise NotImplementedError


class MTCNNDetector(Detector):
    name = "mtcnn"
    OPTIONS = Detector.OPTIONS + ("thresholds", "factor")

    def __init__(self, min_face_size=20, thresholds=(0.6, 0.7, 0.7), factor=0.709,
                 score_threshold=DEFAULT_SCORE_THRESHOLD["mtcnn"], max_side=None):  # fmt: skip
        super().__init__(min_face_size, score_threshold, max_side)
        self.thresholds, self.factor = tuple(thresholds), factor
        self._nets = None  # loaded on first use

    def _detect(self, rgb):
        if self._nets is None:
            self._nets = load_mtcnn_nets()
        with torch.inference_mode():
            args = self.min_face_size, self.thresholds, self.factor
            boxes, points = detect_mtcnn(rgb, self._nets, *args)
        boxes, points = boxes.numpy(), points.numpy().astype(np.float32)
        return [
            Detection((float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), float(b[4]), p)
            for b, p in zip(boxes, points)
        ]


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade; the score is the last stage's weight (detectMultiScale3)."""

    name = "haar"
    OPTIONS = Detector.OPTIONS + ("scale_factor", "min_neighbors")

    def __init__(self, min_face_size=40, scale_factor=1.1, min_neighbors=3,
                 score_threshold=DEFAULT_SCORE_THRESHOLD["haar"], max_side=None):  # fmt: skip
        super().__init__(min_face_size, score_threshold, max_side)
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self._cascade = None  # loaded on first use

    def _detect(self, rgb):
        if self._cascade is None:
            self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # (equalizeHist lowered recall on the tuning half)
        size = (int(self.min_face_size), int(self.min_face_size))
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray, self.scale_factor, self.min_neighbors, minSize=size, outputRejectLevels=True
        )
        return [Detection(tuple(float(v) for v in b), float(s), None) for b, s in zip(boxes, np.ravel(weights))]


_CLASSES = {"mtcnn": MTCNNDetector, "haar": HaarDetector}


def create_detector(name: str = "mtcnn", **options) -> Detector:
    """A face detector by name (see DETECTORS); options as in the detector's constructor."""
    if name not in _CLASSES:
        raise EmodetectError(f"unknown face detector {name!r}; choose one of: {', '.join(DETECTORS)}")
    cls = _CLASSES[name]
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        raise EmodetectError(f"unknown option(s) for {name}: {', '.join(unknown)}; valid: {', '.join(cls.OPTIONS)}")
    return cls(**options)


def _rescale(face: Detection, kx: float, ky: float) -> Detection:
    x, y, w, h = face.box
    marks = None if face.landmarks is None else (face.landmarks * np.float32([kx, ky])).astype(np.float32)
    return Detection((x * kx, y * ky, w * kx, h * ky), face.score, marks)


def _describe(x) -> str:
    return f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
