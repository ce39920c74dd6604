"""ONNX export: the graph takes uint8 faces and gives the PyTorch model's probabilities; metadata round trip."""

import numpy as np
import onnx
import pytest
import torch

from emodetect.cli import main
from emodetect.models import create_model, get_spec
from emodetect.models.artifact import Artifact, describe, load_artifact, save_network
from emodetect.models.export import export_onnx, onnx_session, quantize_int8, read_onnx_metadata
from emodetect.models.predict import Predictor


@pytest.fixture
def tiny_file(tmp_path):
    torch.manual_seed(0)
    return save_network(tmp_path / "tiny.safetensors", create_model("tiny").eval(), "tiny", get_spec("tiny").preprocess,
                        {"tta_flip": True, "temperature": 1.3, "card": {"test_accuracy": 0.5}}, {"width": 8})  # fmt: skip


def test_export_round_trip_matches_pytorch_and_keeps_its_metadata(tiny_file, tmp_path):
    art = load_artifact(tiny_file)
    data = export_onnx(art, tmp_path / "tiny.onnx")
    faces = np.random.default_rng(0).integers(0, 256, (16, 32, 32), dtype=np.uint8)
    (onnx_proba,) = onnx_session(data).run(["probabilities"], {"images": faces[..., None]})
    torch_proba = Predictor(art, backend="torch").predict_proba(faces)
    assert np.abs(onnx_proba - torch_proba).max() <= 1e-4  # temperature and mirror average are in the graph
    meta = read_onnx_metadata(tmp_path / "tiny.onnx")
    assert meta["classes"][0] == "anger" and meta["preprocess"]["size"] == 32 and meta["temperature"] == 1.3
    assert meta["mirror_average"] is True and meta["card"] == {"test_accuracy": 0.5}
    (batch_of_one,) = onnx_session(data).run(["probabilities"], {"images": faces[:1, ..., None]})  # dynamic batch
    assert batch_of_one.shape == (1, 8)


def test_int8_copy_says_so_and_stays_close_to_fp32(tiny_file):
    art = load_artifact(tiny_file)
    data = export_onnx(art)
    faces = np.random.default_rng(2).integers(0, 256, (64, 32, 32, 1), dtype=np.uint8)
    q = quantize_int8(data, faces)
    assert read_onnx_metadata(q)["quantization"].startswith("int8") and "quantization" not in read_onnx_metadata(data)
    p8, logits8 = onnx_session(q).run(["probabilities", "logits"], {"images": faces})
    (p32,) = onnx_session(data).run(["probabilities"], {"images": faces})
    assert p8.shape == p32.shape and np.abs(p8 - p32).max() < 0.05
    # the softmax stays float: the probabilities are the (dequantised) logits' own, not steps of 1/255
    np.testing.assert_allclose(p8, torch.softmax(torch.from_numpy(logits8) / 1.3, 1).numpy(), atol=1e-6)
    # the first convolution stays float too (faster so), and only it: the others read int8 weights
    graph = onnx.load_from_string(q).graph
    made_by = {out: n.op_type for n in graph.node for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) > 1 and [made_by.get(c.input[1]) == "DequantizeLinear" for c in convs] == [False] + [True] * (len(convs) - 1)


@pytest.mark.parametrize("backend", ["fused", "onnx"])
def test_predictor_backends_agree_with_plain_pytorch(tiny_file, backend):
    art = load_artifact(tiny_file)
    faces = np.random.default_rng(1).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    ref = Predictor(art, backend="torch").predict_proba(faces)
    fast = Predictor(art, backend=backend)
    assert fast.backend == backend
    np.testing.assert_allclose(fast.predict_proba(faces), ref, atol=1e-4 if backend == "onnx" else 1e-5)


def test_in_memory_models_with_the_same_metadata_get_their_own_onnx_graph(tmp_path, monkeypatch):
    monkeypatch.setenv("EMODETECT_CACHE", str(tmp_path))  # the ONNX cache lives there; start it empty
    faces = np.random.default_rng(3).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    meta = describe("torch", "tiny", get_spec("tiny").preprocess, {"tta_flip": False})
    probas = []
    for seed in (0, 1):  # same settings and metadata, different weights (a sweep, an ablation)
        torch.manual_seed(seed)
        art = Artifact(create_model("tiny", width=8).eval(), dict(meta))
        onnx_p = Predictor(art, backend="onnx").predict_proba(faces)
        torch_p = Predictor(art, backend="torch").predict_proba(faces)
        assert np.abs(onnx_p - torch_p).max() <= 1e-4  # the graph of this model, not of the first one cached
        probas.append(onnx_p)
    assert np.abs(probas[0] - probas[1]).max() > 1e-3


def test_export_command_writes_the_graph_and_refuses_bad_targets(tiny_file, tmp_path, capsys):
    assert main(["export", str(tiny_file), "--onnx", str(tmp_path / "out.onnx")]) == 0
    assert (tmp_path / "out.onnx").stat().st_size > 1000 and "opset 17" in capsys.readouterr().out
    assert main(["export", str(tiny_file), "--onnx", str(tmp_path / "out.txt")]) == 2
    assert main(["export", str(tiny_file), "--onnx", str(tmp_path / "x.onnx"), "--int8", str(tmp_path / "q.onnx")]) == 2
    same = str(tmp_path / "same.onnx")  # the int8 copy may be deleted: it must never be the fp32 file
    assert main(["export", str(tiny_file), "--onnx", same, "--int8", same, "--data", str(tmp_path)]) == 2
    assert not (tmp_path / "same.onnx").exists()


def test_an_int8_copy_that_is_not_kept_leaves_no_earlier_graph_behind(tiny_file, tmp_path, capsys, monkeypatch):
    import emodetect.runs

    old = tmp_path / "q.onnx"
    old.write_bytes(b"an earlier export's int8 graph")
    report = {"kept": False, "val_int8_accuracy": 0.5, "val_fp32_accuracy": 0.6, "val_change": -0.1, "change": -0.1,
              "n_val_images": 10, "n_images": 10}  # fmt: skip
    monkeypatch.setattr(emodetect.runs, "quantize_and_check", lambda *a, **k: report)
    assert main(["export", str(tiny_file), "--onnx", str(tmp_path / "x.onnx"), "--int8", str(old),
                 "--data", str(tmp_path)]) == 0  # fmt: skip
    assert not old.exists() and f"the earlier {old} was removed" in capsys.readouterr().out


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["default", "fast"])
def test_the_shipped_models_export_within_1e4_of_pytorch_on_real_faces(name, real_faces, tmp_path):
    import emodetect

    art = emodetect.load_model(name).artifact
    faces = real_faces[0][:24]
    size = art.preprocess.size
    import cv2

    at_size = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in faces])
    (onnx_proba,) = onnx_session(export_onnx(art)).run(["probabilities"], {"images": at_size})
    torch_proba = Predictor(art, backend="torch").predict_proba(at_size)
    assert np.abs(onnx_proba - torch_proba).max() <= 1e-4


def test_the_onnx_cache_keeps_the_most_recently_used_graphs(tiny_file, tmp_path, monkeypatch):
    import os

    from emodetect.models.export import ONNX_CACHE_KEEP, cached_onnx

    folder = tmp_path / "onnx"
    folder.mkdir()
    for i in range(ONNX_CACHE_KEEP + 4):  # graphs of networks trained earlier, oldest first
        (folder / f"old{i}.onnx").write_bytes(b"x")
        os.utime(folder / f"old{i}.onnx", (1000 + i, 1000 + i))
    graph = cached_onnx(load_artifact(tiny_file), cache_dir=tmp_path)
    left = sorted(p.name for p in folder.glob("*.onnx"))
    assert len(left) == ONNX_CACHE_KEEP and not {f"old{i}.onnx" for i in range(5)} & set(left)
    mine = next(p for p in folder.glob("*.onnx") if not p.name.startswith("old"))
    os.utime(mine, (2000, 2000))
    monkeypatch.setattr("emodetect.models.export.export_onnx", lambda *a, **k: pytest.fail("exported again"))
    assert cached_onnx(load_artifact(tiny_file), cache_dir=tmp_path) == graph  # found again, and marked as used
    assert mine.stat().st_mtime > 2000
