import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from emodetect.cli import main
from emodetect.data.transforms import Preprocess
from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES
from emodetect.models import create_model, get_spec
from emodetect.models.artifact import load_artifact, save_network, save_pipeline
from emodetect.models.predict import Predictor


def test_network_round_trip_predicts_the_same(tmp_path, tiny_dataset):
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    pre = get_spec("tiny").preprocess
    path = save_network(tmp_path / "m.safetensors", model, "tiny", pre, {"label_source": "folder"}, {"width": 8})
    art = load_artifact(path)
    assert art.name == "tiny" and art.preprocess == pre and art.meta["label_source"] == "folder"
    assert art.classes[0] == "anger" and "torch" in art.meta["versions"]
    images = tiny_dataset.images[:10]
    from emodetect.models.predict import predict_logits

    np.testing.assert_allclose(Predictor(art, backend="torch").logits(images), predict_logits(model, images, pre), atol=1e-5)
    half = load_artifact(save_network(tmp_path / "h.safetensors", model, "tiny", pre, {}, {"width": 8}, half=True))
    np.testing.assert_allclose(Predictor(half, backend="torch").logits(images), predict_logits(model, images, pre), atol=2e-2)
    assert (tmp_path / "h.safetensors").stat().st_size < (tmp_path / "m.safetensors").stat().st_size


def test_pipeline_round_trip_predicts_the_same(tmp_path, tiny_dataset):
    pre = get_spec("logreg").preprocess
    tr = tiny_dataset.subset("train")
    from emodetect.data.transforms import to_pixel_rows

    x = to_pixel_rows(tr.images, pre)
    pipe = create_model("hog_lbp_svm").fit(x, tr.labels)
    art = load_artifact(save_pipeline(tmp_path / "p.skops", pipe, "hog_lbp_svm", pre, {"label_source": "csv"}))
    np.testing.assert_array_equal(art.model.predict(x), pipe.predict(x))
    assert art.kind == "sklearn" and art.meta["label_source"] == "csv"


def test_other_image_sizes_and_colour_modes_go_through_the_models_preprocessing(tmp_path):
    model = create_model("tiny").eval()
    art = load_artifact(save_network(tmp_path / "m.safetensors", model, "tiny", get_spec("tiny").preprocess, {},
                                     {"width": 8}))  # fmt: skip
    rgb_big = np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    assert Predictor(art).predict_proba(rgb_big).shape == (3, 8)


def test_missing_corrupt_and_unknown_files_are_clear_errors(tmp_path):
    with pytest.raises(EmodetectError, match="model file not found"):
        load_artifact(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(EmodetectError, match="not a valid emodetect model file"):
        load_artifact(bad)
    bad_skops = tmp_path / "bad.skops"
    bad_skops.write_bytes(b"PK garbage")
    with pytest.raises(EmodetectError, match="not a valid emodetect model file"):
        load_artifact(bad_skops)
    other = tmp_path / "model.pkl"
    other.write_bytes(b"x")
    with pytest.raises(EmodetectError, match="unknown model file type"):
        load_artifact(other)


def test_pickled_payloads_are_refused(tmp_path):
    import skops.io as sio

    class Evil:  # defined here, so outside the allow-list of types
        pass

    path = tmp_path / "evil.skops"
    sio.dump({"pipeline": Evil(), "meta": "{}"}, path)
    with pytest.raises(EmodetectError, match="not allowed"):
        load_artifact(path)


def test_preprocess_round_trips():
    pre = Preprocess(112, "rgb", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert Preprocess.from_dict(pre.to_dict()) == pre


# ------------------------------------------------------------------------------- hostile model files
# Each crafted .skops file runs code when skops is told to trust what it names (the control below proves the
# payloads are live); load_artifact must refuse every one before anything runs.


def _js(v):
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(v),
            "is_json": True}  # fmt: skip


def _tuple(*items):
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": list(items)}


def _type(module, name):
    return {"__class__": name, "__module__": module, "__loader__": "TypeNode"}


def _function(module, name):
    return {"__class__": name, "__module__": module, "__loader__": "FunctionNode"}


def _empty_dict():
    return {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {},
            "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": []}}  # fmt: skip


def _craft_skops(path, content: dict, key_types=None):
    key_types = key_types or [_type("builtins", "str")] * len(content)
    root = {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": content,
            "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": key_types},
            "protocol": 2, "_skops_version": "0.16.0"}  # fmt: skip
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("schema.json", json.dumps(root))
    return path


def _payloads(marker: Path) -> dict:
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    reduce = "ConstructorFromReduceNode"
    meta = _js("{}")
    return {
        "builtins_exec": {"pipeline": {"__class__": "exec", "__module__": "builtins", "__loader__": reduce,
                                       "content": _tuple(_js(code))}, "meta": meta},
        "numpy_savetxt": {"pipeline": {"__class__": "savetxt", "__module__": "numpy", "__loader__": reduce,
                                       "content": _tuple(_js(str(marker)), _js([[1, 2]]))}, "meta": meta},
        "operator_call": {"pipeline": {"__class__": "call", "__module__": "operator", "__loader__": reduce,
                                       "content": _tuple(_function("builtins", "exec"), _js(code))}, "meta": meta},
        "dict_key_type": ({code: _js(1), "meta": meta}, [_type("builtins", "exec"), _type("builtins", "str")]),
        "functools_partial": ({code: _js(1), "meta": meta}, [
            {"__class__": "partial", "__module__": "functools", "__loader__": "PartialNode",
             "content": {"func": _function("builtins", "exec"), "args": _tuple(), "kwds": _empty_dict(),
                         "namespace": _js(None)}}, _type("builtins", "str")]),
        "operator_methodcaller": ({"pipeline": _js(1), "meta": meta}, [
            {"__class__": "methodcaller", "__module__": "operator", "__loader__": "OperatorFuncNode",
             "attrs": _tuple(_js("__len__"))}, _type("builtins", "str")]),
        # a reduce call of a class that is allowed (as a plain object), with arguments from the file
        "reduce_of_allowed_class": {"pipeline": {"__class__": "Pipeline", "__module__": "sklearn.pipeline",
                                                 "__loader__": reduce, "content": _tuple(_js([]))}, "meta": meta},
        "object_of_builtin_callable": {"pipeline": {"__class__": "system", "__module__": "os",
                                                    "__loader__": "ObjectNode", "content": _empty_dict()}, "meta": meta},
    }  # fmt: skip


@pytest.mark.parametrize("trick", list(_payloads(Path("m"))))
def test_crafted_skops_files_are_refused_and_run_nothing(tmp_path, trick):
    marker = tmp_path / "marker"
    payload = _payloads(marker)[trick]
    content, key_types = payload if isinstance(payload, tuple) else (payload, None)
    path = _craft_skops(tmp_path / f"{trick}.skops", content, key_types)
    with pytest.raises(EmodetectError, match="not allowed"):
        load_artifact(path)
    assert not marker.exists()
    for argv in (["evaluate", "--model", str(path), "--data", str(tmp_path)], ["embed", str(tmp_path)]):
        run = tmp_path  # a run directory holding the crafted file
        (run / "model.skops").write_bytes(path.read_bytes())
        assert main(argv) == 2
        assert not marker.exists()


@pytest.mark.parametrize("trick", ["builtins_exec", "numpy_savetxt", "dict_key_type", "functools_partial"])
def test_the_crafted_payloads_are_live_under_a_trusting_loader(tmp_path, trick):
    """The control: with skops trusting what the file names, the same files do run code."""
    import skops.io as sio

    marker = tmp_path / "marker"
    payload = _payloads(marker)[trick]
    content, key_types = payload if isinstance(payload, tuple) else (payload, None)
    path = _craft_skops(tmp_path / "x.skops", content, key_types)
    sio.load(path, trusted=sio.get_untrusted_types(file=path))
    assert marker.exists()


def _fitted(name, tiny_dataset, **params):
    from emodetect.data.transforms import to_pixel_rows

    tr = tiny_dataset.subset("train")
    x = to_pixel_rows(tr.images, get_spec(name).preprocess)
    return create_model(name, **params).fit(x, tr.labels), x


def test_every_registered_pipeline_saves_with_allowed_nodes_only(tmp_path, tiny_dataset):
    """SKOPS_ALLOWED is derived from what this project's own pipelines contain: each one saves and loads."""
    import skops.io as sio

    from emodetect.models import list_models
    from emodetect.models.artifact import SKOPS_ALLOWED, skops_nodes

    small = {"pca__n_components": 10, "clf__n_estimators": 3, "clf__max_iter": 5}
    seen = set()
    for name in list_models("sklearn"):
        params = {k: v for k, v in small.items() if k in get_spec(name).defaults}
        pipe, x = _fitted(name, tiny_dataset, **params)
        path = save_pipeline(tmp_path / f"{name}.skops", pipe, name, get_spec(name).preprocess, {})
        with zipfile.ZipFile(path) as z:
            seen |= skops_nodes(json.loads(z.read("schema.json")))
        np.testing.assert_array_equal(load_artifact(path).model.predict(x), pipe.predict(x))
        assert set(sio.get_untrusted_types(file=path)) <= {t for _, t in SKOPS_ALLOWED}
    assert seen <= SKOPS_ALLOWED
    extra = {t for _, t in SKOPS_ALLOWED - seen}
    assert extra <= {"builtins.int", "numpy.int32", "numpy.float32", "numpy.int64", "numpy.float64"}, extra


def test_a_decision_tree_with_out_of_range_nodes_is_refused(tmp_path, tiny_dataset):
    import skops.io as sio

    pipe, _ = _fitted("random_forest", tiny_dataset, pca__n_components=10, clf__n_estimators=2)
    tree = pipe.named_steps["clf"].estimators_[0].tree_
    state = tree.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["left_child"][0] = 10**6  # scikit-learn would read far outside the node array
    tree.__setstate__(state)
    path = tmp_path / "rf.skops"
    meta = json.dumps({"format_version": 1, "kind": "sklearn", "model": "random_forest", "classes": list(CLASSES),
                       "preprocess": get_spec("random_forest").preprocess.to_dict()})  # fmt: skip
    path.write_bytes(sio.dumps({"pipeline": pipe, "meta": meta}))
    with pytest.raises(EmodetectError, match="out-of-range"):
        load_artifact(path)


def _tiny_file(tmp_path, name="m.safetensors", **meta_changes):
    """A valid tiny network file, then its description edited (the weights are kept as they are)."""
    from safetensors.torch import load_file, save_file

    path = save_network(tmp_path / name, create_model("tiny"), "tiny", get_spec("tiny").preprocess, {}, {"width": 8})
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["emodetect"])
    for key, value in meta_changes.items():
        target = meta
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    save_file(load_file(str(path)), str(path), metadata={"emodetect": json.dumps(meta)})
    return path


@pytest.mark.parametrize("change, message", [
    ({"model_kwargs": {"width": 10**7}}, "not valid for 'tiny'"),
    ({"model_kwargs": {"width": 4000}}, "not valid for 'tiny'"),  # over 16 times the default
    ({"model_kwargs": {"width": -5}}, "not valid for 'tiny'"),
    ({"model": "resnet", "model_kwargs": {"widths": [512, 1024, 2048, 4096]}}, "parameters"),  # fine options, too big
    ({"model": "resnet", "model_kwargs": {"depths": [4096] * 16}}, "not valid for 'resnet'"),  # minutes to build
    ({"temperature": 10**400}, "temperature"),  # too large for a float
    ({"preprocess.std": [1e-300]}, "std"),
    ({"model_kwargs": {"width": 16}}, "weight .* has shape"),  # a fine network, but the weights are for width 8
    ({"model_kwargs": {"depth": 3}}, "takes no option"),
    ({"source": 5}, "source"),
    ({"data": [1]}, "data options"),
    ({"data": {"split_seed": -1}}, "data options"),
    ({"preprocess.size": 30000}, "input size"),
    ({"preprocess.mode": "cmyk"}, "colour mode"),
    ({"preprocess.std": [0.0]}, "std must be at least"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"format_version": 99}, "newer emodetect"),
    ({"format_version": "1"}, "format_version"),
    ({"model": "resnet", "model_kwargs": {}}, "do not match"),
    ({"model": "no_such_net"}, "unknown model"),
    ({"kind": "sklearn"}, "kind"),
    ({"classes": ["anger", "joy"]}, "classes"),
    ({"dtype": "int8"}, "dtype"),
])  # fmt: skip
def test_hostile_network_descriptions_are_refused_before_allocation(tmp_path, change, message):
    path = _tiny_file(tmp_path, **change)
    with pytest.raises(EmodetectError, match=message):
        load_artifact(path)


def test_non_finite_truncated_and_headerless_weights_are_clear_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _tiny_file(tmp_path)
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"), metadata=header)
    with pytest.raises(EmodetectError, match="not finite"):
        load_artifact(tmp_path / "nan.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EmodetectError, match="not a valid emodetect model file"):
        load_artifact(tmp_path / "cut.safetensors")
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(EmodetectError, match="no emodetect description"):
        load_artifact(tmp_path / "bare.safetensors")


def test_skops_archives_with_bombs_or_object_arrays_are_refused(tmp_path):
    bomb = tmp_path / "bomb.skops"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("schema.json", "{}")
        z.writestr("big.npy", b"\0" * (40 << 20))  # 40 MiB of zeros compress about 1000:1
    with pytest.raises(EmodetectError, match="zip bomb"):
        load_artifact(bomb)
    lying = tmp_path / "lying.skops"
    buf = io.BytesIO()
    np.save(buf, np.zeros(4))
    header = buf.getvalue().replace(b"(4,)", b"(9999999,)")  # a header promising far more than the file holds
    with zipfile.ZipFile(lying, "w") as z:
        z.writestr("schema.json", "{}")
        z.writestr("a.npy", header)
    with pytest.raises(EmodetectError, match="declares more data|not a valid"):
        load_artifact(lying)


def _dump(path, pipe, name):
    import skops.io as sio

    meta = json.dumps({"format_version": 1, "kind": "sklearn", "model": name, "classes": list(CLASSES),
                       "preprocess": get_spec(name).preprocess.to_dict()})  # fmt: skip
    path.write_bytes(sio.dumps({"pipeline": pipe, "meta": meta}))
    return path


def test_tampered_pipelines_are_refused_before_they_run(tmp_path, tiny_dataset, monkeypatch):
    """Red-team cases that crashed scikit-learn (segfaults) or ran out of memory at predict time."""
    import copy

    import sklearn.tree._tree as T
    from sklearn.pipeline import Pipeline

    import emodetect.models.artifact as artifact

    rf, _ = _fitted("random_forest", tiny_dataset, pca__n_components=10, clf__n_estimators=2)
    cases = {}
    bad = copy.deepcopy(rf)  # a tree hidden one level down, with a child index far outside it
    st = bad.named_steps["clf"].estimators_[0].tree_.__getstate__()
    st["nodes"] = st["nodes"].copy()
    st["nodes"]["left_child"][0] = 2**40
    bad.named_steps["clf"].estimators_[0].tree_.__setstate__(st)
    cases["nested"] = (Pipeline([("inner", bad)]), "layout")
    lying = copy.deepcopy(rf)  # a tree that claims 10**9 features and reads feature 10**8
    dtc = lying.named_steps["clf"].estimators_[0]
    st = dtc.tree_.__getstate__()
    st["nodes"] = st["nodes"].copy()
    st["nodes"]["feature"][st["nodes"]["left_child"] != -1] = 10**8
    new = T.Tree(10**9, np.asarray(dtc.tree_.n_classes), dtc.tree_.n_outputs)
    new.__setstate__(st)
    dtc.tree_ = new
    cases["feature_index"] = (lying, "out-of-range nodes or features")
    odd = copy.deepcopy(rf)
    odd.named_steps["clf"].classes_ = np.arange(100, 108)
    cases["classes"] = (odd, "classes")
    empty = copy.deepcopy(rf)
    empty.steps = []
    cases["no_steps"] = (empty, "layout")
    hog, _ = _fitted("hog_lbp_svm", tiny_dataset)
    hog.named_steps["features"].lbp_grid = 3000  # 7.9 GiB for two faces
    cases["lbp_grid"] = (hog, "lbp_grid")
    for name, (pipe, message) in cases.items():
        model = "hog_lbp_svm" if name == "lbp_grid" else "random_forest"
        with pytest.raises(EmodetectError, match=message):
            load_artifact(_dump(tmp_path / f"{name}.skops", pipe, model))
    monkeypatch.setattr(artifact, "MAX_SCHEMA_BYTES", 1000)  # a schema that inflates in memory
    with pytest.raises(EmodetectError, match="schema declares"):
        load_artifact(_dump(tmp_path / "big_schema.skops", rf, "random_forest"))


def test_a_shipped_name_means_the_shipped_model_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    from emodetect.models.artifact import resolve_artifact

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()  # say, `emodetect train ... --out default`
    assert resolve_artifact("default").path.parent.name == "weights"
    with pytest.raises(EmodetectError, match="no model file"):
        resolve_artifact("./default")
