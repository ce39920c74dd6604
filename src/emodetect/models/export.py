"""ONNX export: a network as one self-contained graph from uint8 faces to calibrated probabilities.

The graph's input `images` is uint8 (N, size, size, channels) in the model's colour mode and size (N is
dynamic); normalisation, the mirror average (when the model uses it) and the temperature-scaled softmax are
inside, so the outputs `probabilities` (N, K) are what `Predictor.predict_proba` gives. The file's metadata
(`emodetect`, JSON) holds the classes, input size, colour mode, normalisation, temperature and the model
card's key numbers; `read_onnx_metadata` reads it back. `quantize_int8` makes a statically quantised copy
calibrated on real faces.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emodetect import __version__
from emodetect.errors import EmodetectError
from emodetect.files import atomic_write
from emodetect.models.fuse import MirrorAveraged, fuse

OPSET = 17


class _Graph(nn.Module):
    """uint8 (N, S, S, C) -> (probabilities, logits), everything a Predictor does, inside one graph."""

    def __init__(self, model: nn.Module, mean, std, temperature: float, mirror: bool):
        super().__init__()
        self.model = MirrorAveraged(model) if mirror else model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.temperature = float(temperature)

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float() / 255.0  # (N, C, S, S)
        logits = self.model((x - self.mean) / self.std)
        return torch.softmax(logits / self.temperature, dim=1), logits


def onnx_metadata(artifact) -> dict:
    """What the exported file says about itself (no paths; of versions only emodetect's own)."""
    meta = artifact.meta
    card = {k: v for k, v in (meta.get("card") or {}).items() if isinstance(v, (int, float, str))}
    return {"model": artifact.name, "classes": list(artifact.classes), "preprocess": meta["preprocess"],
            "input": "uint8 (N, size, size, channels), the model's colour mode and size",
            "temperature": artifact.temperature, "mirror_average": bool(meta.get("tta_flip")), "card": card,
            "emodetect": __version__}  # fmt: skip


def export_onnx(artifact, path: str | Path | None = None) -> bytes:
    """The artifact (a network) as ONNX bytes; also written to `path` when given."""
    import onnx

    if artifact.kind != "torch":
        raise EmodetectError(f"only networks export to ONNX ({artifact.name} is a {artifact.kind} model)")
    pre = artifact.preprocess
    graph = _Graph(fuse(artifact.model, pre.size, pre.channels), pre.mean, pre.std, artifact.temperature,
                   bool(artifact.meta.get("tta_flip"))).eval()  # fmt: skip
    example = torch.zeros(2, pre.size, pre.size, pre.channels, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(graph, (example,), buf, dynamo=False, opset_version=OPSET, input_names=["images"],
                          output_names=["probabilities", "logits"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    model = onnx.load_from_string(buf.getvalue())
    del model.metadata_props[:]
    model.metadata_props.add(key="emodetect", value=json.dumps(onnx_metadata(artifact)))
    data = model.SerializeToString()
    if path is not None:
        atomic_write(path, data)
    return data


def read_onnx_metadata(path_or_bytes) -> dict:
    import onnx

    model = onnx.load(str(path_or_bytes)) if not isinstance(path_or_bytes, bytes) else onnx.load_from_string(path_or_bytes)
    props = {p.key: p.value for p in model.metadata_props}
    if "emodetect" not in props:
        raise EmodetectError("not an ONNX file exported by emodetect (no emodetect metadata)")
    return json.loads(props["emodetect"])


def onnx_session(data: bytes | str | Path, threads: int | None = None):
    """An onnxruntime session on the CPU with `threads` intra-op threads (default: every core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: onnxruntime's notes are not the user's concern
    # idle workers sleep instead of spinning: a spinning pool steals the cores from the face detector that runs
    # between two classifications (measured: a one-face 640x480 photo took 75 ms end to end with spinning, 30 without)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data if isinstance(data, bytes) else str(data), opts, providers=["CPUExecutionProvider"])


def _digest(artifact):
    """SHA-256 of what identifies a model: its file's bytes, or (not in a file) its metadata and every weight, since
    two networks trained with the same settings share the metadata, not the weights."""
    if artifact.path:
        return hashlib.sha256(artifact.path.read_bytes())
    digest = hashlib.sha256(json.dumps(artifact.meta, sort_keys=True, default=str).encode())
    return _hash_weights(artifact.model, digest)


def _hash_weights(model: nn.Module, digest):
    for name, t in model.state_dict().items():  # fed one tensor at a time: no copy of the whole model
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a network's weights as loaded (names and values), whatever file or metadata holds them."""
    return _hash_weights(model, hashlib.sha256()).hexdigest()


def int8_path(model_path: str | Path) -> Path:
    """Where a model file's int8 graph ships: beside it, `NAME.int8.onnx` (`emodetect ship --int8`)."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.int8.onnx")


def shipped_int8(artifact) -> bytes | None:
    """The int8 graph beside the artifact's file when it was made from these very weights, else None."""
    if artifact.kind != "torch" or artifact.path is None or not int8_path(artifact.path).is_file():
        return None
    data = int8_path(artifact.path).read_bytes()
    try:
        meta = read_onnx_metadata(data)
    except Exception:  # noqa: BLE001 - a damaged or foreign file is not this model's graph
        return None
    return data if meta.get("weights_sha256") == weights_sha256(artifact.model) else None


def with_onnx_metadata(onnx_bytes: bytes, update: dict) -> bytes:
    """The graph with `update` merged into its emodetect metadata."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    props = [p for p in model.metadata_props if p.key == "emodetect"]
    if not props:  # a tool on the way dropped it: never lose the update silently
        raise EmodetectError("the ONNX graph has no emodetect metadata to update")
    props[0].value = json.dumps({**json.loads(props[0].value), **update})
    return model.SerializeToString()


def cached_onnx(artifact, cache_dir: str | Path | None = None) -> bytes:
    """The artifact's ONNX export, made once per model (file, or weights and metadata) and kept in the cache folder."""
    from emodetect.data.ingest import default_cache_dir

    digest = _digest(artifact)
    digest.update(f"{__version__}-{OPSET}".encode())
    path = Path(cache_dir or default_cache_dir()) / "onnx" / f"{artifact.name}-{digest.hexdigest()[:20]}.onnx"
    try:
        data = path.read_bytes() if path.is_file() else None
    except OSError:
        data = None
    if data is not None:
        try:
            os.utime(path)  # recently used: kept by the pruning below
        except OSError:  # a read-only cache: still used as it is
            pass
        return data
    data = export_onnx(artifact)
    try:
        atomic_write(path, data)
        _prune(path.parent, ONNX_CACHE_KEEP)
    except OSError:  # a read-only cache: export every time, still correct
        pass
    return data


ONNX_CACHE_KEEP = 16  # graphs kept in the cache (every trained network adds one): the most recently used


def _prune(folder: Path, keep: int) -> None:
    graphs = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[keep:]:
        old.unlink(missing_ok=True)


def quantize_int8(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
    """A statically quantised (int8, QDQ) copy calibrated on `calibration`: uint8 (N, size, size, C) faces.

    Its metadata says so (`quantization`); the card's accuracy figures in it stay those of the fp32 graph."""
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration[i : i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, ready, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "ready.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        logging.disable(logging.WARNING)  # onnxruntime's advice to pre-process the model goes to the root logger
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # shape inference and ONNX Runtime's graph fusions first (activations folded into their
                # convolutions), so that each quantised convolution is one int8 kernel: without this step the
                # graph ran slower than fp32 (fastlite at 64 px, 2 cores: 2,000 faces/s against 3,900; with it
                # 5,200)
                quant_pre_process(str(src), str(ready))
                # the softmax stays in float: quantised, its probabilities came in steps of 1/255; so does the
                # first convolution (3 input channels): in int8 its quantise/dequantise steps cost more than they
                # save (the shipped fast graph: 4,221 against 3,483 faces/s at batch 256 on 2 cores, validation
                # accuracy 65.14% against 65.24%)
                nodes = onnx.load(str(ready)).graph.node  # in topological order
                kept = [n.name for n in nodes if n.op_type == "Softmax"]
                kept += [n.name for n in nodes if n.op_type == "Conv"][:1]
                quantize_static(str(ready), str(dst), Reader(), nodes_to_exclude=kept, quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        finally:
            logging.disable(logging.NOTSET)
        quantized = dst.read_bytes()
    return with_onnx_metadata(quantized, {"quantization": "int8 static (QDQ), per channel; the card's accuracy "
                                                          "figures are the fp32 model's"})  # fmt: skip
