"""Batched network inference on uint8 images through the model's eval preprocessing."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from emodetect.data.transforms import (
    Preprocess,
    as_image_batch,
    to_model_input,
    to_pixel_rows,
    to_uint8_input,
    to_uint8_tensor,  # fmt: skip
)


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.inference_mode()
def predict_logits(model, images: np.ndarray | torch.Tensor, pre: Preprocess, *, batch_size: int = 256,
                   tta_flip: bool = False, bf16: bool = False, features: bool = False) -> np.ndarray:  # fmt: skip
    """Logits (N, K) for uint8 images (numpy (N,H,W[,3]) or tensor (N,C,H,W)); `features` returns embeddings.

    tta_flip averages the outputs of each image and its horizontal mirror.
    """
    was_training = model.training
    model.eval()
    x_all = to_uint8_tensor(images) if isinstance(images, np.ndarray) else images
    out = []
    fn = model.forward_features if features else model  # every network: forward_features -> (B, D)
    try:
        for start in range(0, len(x_all), batch_size):
            x = to_model_input(x_all[start : start + batch_size], pre).contiguous(memory_format=torch.channels_last)
            with _autocast(bf16):
                y = fn(x).float()
                if tta_flip:
                    y = (y + fn(torch.flip(x, dims=[3])).float()) / 2
            out.append(y)
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


BACKENDS = ("auto", "torch", "fused", "onnx", "int8")


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class Predictor:
    """Uniform prediction for any artifact (network or scikit-learn pipeline) on uint8 face images.

    Images go through the artifact's own preprocessing (size, colour mode, normalisation), so data of
    another size or colour mode is converted, never misread. Outputs always have one column per class in
    `CLASSES` order, whatever classes the model saw in training.

    backend (networks): "torch" (the network as it is), "fused" (batch norm folded into convolutions,
    static padding, the mirror average as one batch of 2N: the same outputs within 1e-5, faster), "onnx"
    (the exported graph in ONNX Runtime; the same within 1e-4), "int8" (the statically quantised graph that
    ships beside the model file, `emodetect ship --int8`, made from these very weights and kept only when it
    lost at most 0.5 points of validation accuracy; close to, not equal to, the float outputs) or "auto": with
    onnxruntime installed "int8" where such a graph ships, else "onnx" (the fastest here;
    bench/bench_fast.py); without it "fused". The caller's model is never changed.
    """

    def __init__(self, artifact, *, batch_size: int = 256, tta_flip: bool | None = None, backend: str = "auto",
                 threads: int | None = None):  # fmt: skip
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.artifact = artifact
        self.pre = artifact.preprocess
        self.batch_size = batch_size
        self.tta_flip = artifact.meta.get("tta_flip", False) if tta_flip is None else tta_flip
        self.model = artifact.model
        self.session = None
        own_mirror = self.tta_flip == bool(artifact.meta.get("tta_flip"))  # the graphs hold the model's own setting
        int8 = None
        if artifact.kind == "torch" and backend in ("auto", "int8") and own_mirror and onnxruntime_available():
            from emodetect.models.export import shipped_int8

            int8 = shipped_int8(artifact)
        if backend == "int8" and artifact.kind == "torch" and int8 is None:
            raise ValueError("the int8 backend needs onnxruntime" if not onnxruntime_available() else
                             "the int8 backend uses the model's own mirror-average setting" if not own_mirror else
                             "no int8 graph made from this model's weights ships beside its file (emodetect ship --int8)")
        self.backend = "sklearn" if artifact.kind != "torch" else (
            ("int8" if int8 is not None else "onnx" if onnxruntime_available() and own_mirror else "fused")
            if backend == "auto" else backend)  # fmt: skip
        if self.backend == "torch":  # NHWC runs convolutions (depthwise above all) much faster on CPU; a copy,
            self.model = copy.deepcopy(artifact.model).eval().to(memory_format=torch.channels_last)  # not theirs
        elif self.backend == "fused":
            from emodetect.models.fuse import MirrorAveraged, fuse

            fused = fuse(artifact.model, self.pre.size, self.pre.channels)
            self.model = MirrorAveraged(fused) if self.tta_flip else fused
        elif self.backend in ("onnx", "int8"):
            if not onnxruntime_available():
                raise ValueError(f"the {self.backend} backend needs onnxruntime (pip install onnxruntime)")
            if not own_mirror:
                raise ValueError(f"the {self.backend} backend uses the model's own mirror-average setting")
            from emodetect.models.export import cached_onnx, onnx_session

            self.session = onnx_session(int8 if self.backend == "int8" else cached_onnx(artifact), threads)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.artifact.classes

    def logits(self, images) -> np.ndarray:
        """(N, K) scores before the softmax (log-probabilities for pipelines that give probabilities).

        images: uint8 (N, H, W) gray or (N, H, W, 3) RGB faces (one face may drop the N), or floats in [0, 1];
        anything else raises ValueError (see `emodetect.data.transforms.as_image_batch`).
        """
        images = as_image_batch(images)
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        if self.backend in ("onnx", "int8"):
            return np.concatenate([self.session.run(["logits"], {"images": to_uint8_input(images[s : s + self.batch_size],
                                                                                          self.pre)})[0]
                                   for s in range(0, len(images), self.batch_size)])  # fmt: skip
        if self.backend == "fused":  # the mirror average is inside the fused model
            return predict_logits(self.model, images, self.pre, batch_size=self.batch_size)
        if self.backend == "torch":
            return predict_logits(self.model, images, self.pre, batch_size=self.batch_size, tta_flip=self.tta_flip)
        pipe = self.model
        out = np.full((len(images), len(self.classes)), -1e9, np.float32)
        for start in range(0, len(images), 2048):
            x = to_pixel_rows(images[start : start + 2048], self.pre)
            if hasattr(pipe, "predict_proba"):
                s = np.log(np.clip(pipe.predict_proba(x), 1e-12, 1))
            else:
                s = pipe.decision_function(x)
                if s.ndim == 1:  # two classes: one margin, for classes_[1]
                    s = np.stack([-s, s], 1)
            out[start : start + len(x), pipe.classes_] = s
        return out

    def _plain(self):
        if self.backend == "torch":
            return self.model
        if not hasattr(self, "_plain_model"):
            self._plain_model = copy.deepcopy(self.artifact.model).eval().to(memory_format=torch.channels_last)
        return self._plain_model

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images), self.artifact.temperature)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.logits(images).argmax(axis=1)

    def embed(self, images) -> np.ndarray:
        """The model's representation: a network's penultimate features, or a pipeline's classifier input."""
        images = as_image_batch(images)
        if len(images) == 0:  # (0, D): the width of one blank face's embedding
            blank = np.zeros((1, self.pre.size, self.pre.size) + ((3,) if self.pre.mode == "rgb" else ()), np.uint8)
            return np.zeros((0, self.embed(blank).shape[1]), np.float32)
        if self.artifact.kind == "torch":  # features from the network as it is (the fast paths end in logits)
            net = self._plain()
            return predict_logits(net, images, self.pre, batch_size=self.batch_size, features=True)
        from emodetect.models.classical import pipeline_embeddings

        return np.concatenate([pipeline_embeddings(self.model, to_pixel_rows(images[s : s + 2048], self.pre))
                               for s in range(0, len(images), 2048)])  # fmt: skip
