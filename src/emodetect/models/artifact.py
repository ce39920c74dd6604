"""Self-describing, safely loadable model files.

- networks: one ``.safetensors`` file; the header's metadata holds the JSON description (model name and
  arguments, classes, preprocessing, label source, config, metrics, library versions, temperature);
- scikit-learn pipelines: one ``.skops`` file holding ``{"pipeline": ..., "meta": ...}``.
Loading needs nothing but the file, and a file can do nothing but describe a model:

- a ``.skops`` file is checked node by node before skops constructs anything: every (loader, type) pair
  must be one that this project's own pipelines are saved with (`SKOPS_ALLOWED`, an exact list, no
  prefixes), so no function, method, ``functools.partial``, ``operator`` trick or reduce call can be
  smuggled in; member sizes and every ``.npy`` header are bounded, and decision trees are checked for
  out-of-range node indices (scikit-learn trusts them at inference);
- the description of either kind is checked against a schema (types, bounds, known model and classes)
  and, for a network, the weights' shapes and dtypes are compared with the model's own before a single
  weight is read, so a file cannot make the loader allocate more than the model it names.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodetect import __version__
from emodetect.data.decode import COLOR_MODES
from emodetect.data.source import zip_member_problem
from emodetect.data.transforms import Preprocess
from emodetect.errors import EmodetectError
from emodetect.files import atomic_write
from emodetect.labels import CLASSES

FORMAT_VERSION = 1
MAX_PARAMETERS = 50_000_000  # far above any model here (EfficientNet-Lite2: 6 M); a file naming more is refused
MAX_INPUT_SIZE = 512
MAX_SKOPS_BYTES = 2 << 30  # all members of a .skops file together, uncompressed (a Random Forest is ~0.3 GB)
MAX_SCHEMA_BYTES = 32 << 20  # its schema.json (a 300-tree forest: ~7 MB); JSON can grow ~30x in memory

# (skops loader, module.type) pairs that this project's own pipelines are saved with, found by saving every
# registered pipeline (`tests/test_artifact.py` does so and checks that each loads); nothing else loads.
SKOPS_ALLOWED = frozenset({
    ("DictNode", "builtins.dict"), ("ListNode", "builtins.list"), ("TupleNode", "builtins.tuple"),
    ("JsonNode", "builtins.str"), ("TypeNode", "builtins.str"), ("TypeNode", "builtins.int"),
    ("NdArrayNode", "numpy.ndarray"), ("NdArrayNode", "numpy.float32"), ("NdArrayNode", "numpy.float64"),
    ("NdArrayNode", "numpy.int32"), ("NdArrayNode", "numpy.int64"),
    ("RandomStateNode", "numpy.random.mtrand.RandomState"),
    ("TreeNode", "sklearn.tree._tree.Tree"),
    ("ObjectNode", "sklearn.pipeline.Pipeline"),
    ("ObjectNode", "sklearn.preprocessing._data.StandardScaler"),
    ("ObjectNode", "sklearn.preprocessing._label.LabelBinarizer"),
    ("ObjectNode", "sklearn.decomposition._pca.PCA"),
    ("ObjectNode", "sklearn.linear_model._logistic.LogisticRegression"),
    ("ObjectNode", "sklearn.svm._classes.LinearSVC"),
    ("ObjectNode", "sklearn.ensemble._forest.RandomForestClassifier"),
    ("ObjectNode", "sklearn.tree._classes.DecisionTreeClassifier"),
    ("ObjectNode", "sklearn.neural_network._multilayer_perceptron.MLPClassifier"),
    ("ObjectNode", "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"),
    ("ObjectNode", "emodetect.models.classical.FaceFeatures"),
})  # fmt: skip


def library_versions() -> dict:
    import sklearn

    versions = {"emodetect": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "scikit-learn": sklearn.__version__}  # fmt: skip
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return versions


@dataclass
class Artifact:
    """A loaded model and its description. `model` is an nn.Module (eval mode) or a fitted Pipeline."""

    model: object
    meta: dict
    path: Path | None = None

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def name(self) -> str:
        return self.meta["model"]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.meta["preprocess"])

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))


def describe(kind: str, name: str, preprocess: Preprocess, meta: dict) -> dict:
    """A model's description as its file records it: format, kind, name, classes, preprocessing, versions, meta."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": name,
        "classes": list(CLASSES),
        "preprocess": preprocess.to_dict(),
        "versions": library_versions(),
        **meta,
    }


def save_network(path: str | Path, model, name: str, preprocess: Preprocess, meta: dict,
                 model_kwargs: dict | None = None, half: bool = False) -> Path:  # fmt: skip
    """Write a network's weights and description; ``half`` stores float16 weights (loads back as float32)."""
    import torch
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v.to(torch.float32) if v.dtype == torch.bfloat16 else v for k, v in state.items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    description = describe("torch", name, preprocess, {"model_kwargs": model_kwargs or {}, "dtype":
                            "float16" if half else "float32", **meta})  # fmt: skip
    text = json.dumps(description)
    validate_meta(json.loads(text), "torch", path)  # never write a file that would not load
    return atomic_write(path, save(state, metadata={"emodetect": text}))


def save_pipeline(path: str | Path, pipeline, name: str, preprocess: Preprocess, meta: dict) -> Path:
    import skops.io as sio

    text = json.dumps(describe("sklearn", name, preprocess, meta))
    validate_meta(json.loads(text), "sklearn", path)
    return atomic_write(path, sio.dumps({"pipeline": pipeline, "meta": text}))


RUN_MODEL_FILES = ("model.safetensors", "model.skops")  # what `emodetect train` writes into a run folder
SHIPPED_MODELS = {"default": "default.safetensors", "fast": "fast.safetensors"}  # in emodetect/weights


def find_model_file(path: str | Path) -> Path:
    """A model file, or the model file inside a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in RUN_MODEL_FILES:
            if (path / name).is_file():
                return path / name
        raise EmodetectError(f"no model file ({' or '.join(RUN_MODEL_FILES)}) in {path}")
    return path


def _model_file(model: str | Path | None):
    """The file `model` names: a shipped model's packaged file (a Traversable) or a model file's path."""
    from importlib import resources

    if model is None or (isinstance(model, str) and model in SHIPPED_MODELS):
        name = SHIPPED_MODELS[model or "default"]
        shipped = resources.files("emodetect.weights").joinpath(name)
        if not shipped.is_file():
            raise EmodetectError(f"this installation has no shipped model {model or 'default'!r} (emodetect/weights/{name})")
        return shipped
    path = find_model_file(model)
    if not path.is_file():
        raise EmodetectError(f"model file not found: {path}")
    return path


def resolve_artifact(model: str | Path | None = None) -> Artifact:
    """A shipped model by name (None or "default": the default model; "fast"), a model file or a run folder. A
    shipped name always means the shipped model, even where a folder of that name exists (``./default`` is it)."""
    from importlib import resources

    with resources.as_file(_model_file(model)) as path:
        return load_artifact(path)


def model_sha256(model: str | Path | None = None) -> str:
    """SHA-256 of the file `resolve_artifact(model)` loads: a run records it for its teacher and `init_from` models,
    since a shipped name such as "default" means another model once a new one is shipped."""
    return hashlib.sha256(_model_file(model).read_bytes()).hexdigest()


def load_artifact(path: str | Path) -> Artifact:
    """Load a ``.safetensors`` network or a ``.skops`` pipeline written by this package."""
    path = Path(path)
    if not path.is_file():
        raise EmodetectError(f"model file not found: {path}")
    if path.suffix == ".skops":
        return _load_pipeline(path)
    if path.suffix == ".safetensors":
        return _load_network(path)
    raise EmodetectError(f"{path}: unknown model file type (expected .safetensors or .skops)")


# ------------------------------------------------------------------------------------------ description


def _invalid(path, msg: str) -> EmodetectError:
    return EmodetectError(f"{path} is not a valid emodetect model file ({msg})")


def _finite_number(v) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def validate_meta(meta, kind: str, path="model") -> dict:
    """Check a model description read from a file (or about to be written); raises EmodetectError."""
    from emodetect.config import DataConfig
    from emodetect.models.registry import check_model_options, get_spec

    if not isinstance(meta, dict):
        raise _invalid(path, "its description is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _invalid(path, "missing or bad format_version")
    if version > FORMAT_VERSION:
        raise EmodetectError(f"{path} was written by a newer emodetect (format {version}); upgrade to load it")
    if meta.get("kind") != kind:
        raise _invalid(path, f"its description says kind {meta.get('kind')!r}, the file holds a {kind} model")
    name = meta.get("model")
    if not isinstance(name, str):
        raise _invalid(path, "missing model name")
    spec = get_spec(name)  # an unknown model name is a clear error listing the known ones
    if spec.kind != kind:
        raise _invalid(path, f"model {name!r} is a {spec.kind} model")
    classes = meta.get("classes")
    if (not isinstance(classes, list) or not 2 <= len(classes) <= len(CLASSES) or len(set(map(str, classes))) !=
            len(classes) or any(c not in CLASSES for c in classes)):  # fmt: skip
        raise _invalid(path, "classes must be a list of known emotion names")
    pre = meta.get("preprocess")
    if not isinstance(pre, dict) or set(pre) != {"size", "mode", "mean", "std"}:
        raise _invalid(path, "preprocess must have size, mode, mean and std")
    if not isinstance(pre["size"], int) or isinstance(pre["size"], bool) or not 8 <= pre["size"] <= MAX_INPUT_SIZE:
        raise _invalid(path, f"input size must be a whole number from 8 to {MAX_INPUT_SIZE}")
    if pre["mode"] not in COLOR_MODES:
        raise _invalid(path, f"colour mode must be one of {', '.join(COLOR_MODES)}")
    channels = 1 if pre["mode"] == "gray" else 3
    for key in ("mean", "std"):
        v = pre[key]
        if not isinstance(v, list) or len(v) != channels or not all(_finite_number(x) and abs(x) <= 10 for x in v):
            raise _invalid(path, f"preprocess {key} must be {channels} finite numbers")
    if any(s < 1e-3 for s in pre["std"]):
        raise _invalid(path, "preprocess std must be at least 0.001")
    t = meta.get("temperature", 1.0)
    if not _finite_number(t) or not 0.01 <= t <= 100:
        raise _invalid(path, "temperature must be a number from 0.01 to 100")
    if "tta_flip" in meta and not isinstance(meta["tta_flip"], bool):
        raise _invalid(path, "tta_flip must be true or false")
    source = meta.get("source")
    if source is not None and not (isinstance(source, str) or (isinstance(source, list) and all(isinstance(x, str) for x in source))):
        raise _invalid(path, "source must be a path or a list of paths")
    if "data" in meta:
        if not isinstance(meta["data"], dict):
            raise _invalid(path, "data must be an object of data options")
        try:
            DataConfig(**meta["data"])
        except (EmodetectError, TypeError) as exc:
            raise _invalid(path, f"data options: {str(exc)[:200]}") from None
    if kind == "torch":
        if meta.get("dtype") not in ("float16", "float32"):
            raise _invalid(path, "dtype must be float16 or float32")
        try:
            check_model_options(spec, meta.get("model_kwargs"))
        except EmodetectError as exc:
            raise _invalid(path, str(exc)) from None
    return meta


# ---------------------------------------------------------------------------------------------- networks


def _load_network(path: Path) -> Artifact:
    import torch
    from safetensors import SafetensorError, safe_open

    from emodetect.models.registry import create_model

    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
            shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _invalid(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        meta = json.loads(header["emodetect"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise _invalid(path, "no emodetect description in its header") from None
    validate_meta(meta, "torch", path)
    kwargs = dict(num_classes=len(meta["classes"]), pretrained=False, **meta["model_kwargs"])
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated until the file is known to fit
            skeleton = create_model(meta["model"], **kwargs)
    except EmodetectError:
        raise
    except Exception as exc:  # options that the builder cannot use
        raise _invalid(path, f"model options do not build a {meta['model']!r}: {type(exc).__name__}") from None
    n_params = sum(p.numel() for p in skeleton.parameters())
    if n_params > MAX_PARAMETERS:
        raise _invalid(path, f"its options describe a network of {n_params:,} parameters")
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if not k.endswith("num_batches_tracked")}
    if set(shapes) != set(expected):
        diff = sorted(set(shapes) ^ set(expected))[:5]
        raise _invalid(path, f"its weights do not match model {meta['model']!r} ({', '.join(diff)})")
    for k, (shape, dtype) in shapes.items():
        if shape != expected[k] or dtype not in ("F16", "F32", "BF16"):
            raise _invalid(path, f"weight {k} has shape {shape} and dtype {dtype}; {meta['model']!r} needs {expected[k]}")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _invalid(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    state = {k: v.float() for k, v in state.items()}
    if not all(bool(torch.isfinite(v).all()) for v in state.values()):
        raise _invalid(path, "some weights are not finite numbers")
    model = create_model(meta["model"], **kwargs)
    model.load_state_dict(state, strict=False)  # every key was checked above; BatchNorm counters are not stored
    model.eval()
    return _smoke_tested(Artifact(model, meta, path))


def _smoke_tested(artifact: Artifact) -> Artifact:
    """The artifact, once it has turned two blank faces into finite probabilities; else a clear error."""
    from emodetect.models.predict import Predictor

    pre = artifact.preprocess
    blank = np.full((2, pre.size, pre.size) if pre.mode == "gray" else (2, pre.size, pre.size, 3), 128, np.uint8)
    try:
        proba = Predictor(artifact, batch_size=2).predict_proba(blank)
    except MemoryError:
        raise _invalid(artifact.path, "it needs more memory than there is to run") from None
    except Exception as exc:  # attributes that do not fit together: the model cannot run
        raise _invalid(artifact.path, f"it cannot run ({type(exc).__name__}: {str(exc)[:150]})") from None
    if proba.shape != (2, len(CLASSES)) or not np.isfinite(proba).all():
        raise _invalid(artifact.path, "its outputs are not finite probabilities")
    return artifact


# --------------------------------------------------------------------------------------------- pipelines


def skops_nodes(schema) -> set[tuple[str, str]]:
    """Every (loader, module.type) pair in a skops schema tree."""
    pairs, stack = set(), [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__loader__" in node:
                pairs.add((str(node["__loader__"]), f"{node.get('__module__')}.{node.get('__class__')}"))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return pairs


def _check_skops_archive(path: Path) -> list[str]:
    """Bound the archive and check every node before skops reads it; returns the types to trust."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if sum(i.file_size for i in infos) > MAX_SKOPS_BYTES:
                raise _invalid(path, "its members expand beyond 2 GiB")
            for info in infos:
                problem = zip_member_problem(info, MAX_SKOPS_BYTES)
                if problem:
                    raise _invalid(path, f"member {info.filename[:60]!r}: {problem}")
                if info.filename.endswith(".npy"):
                    _check_npy_header(z, info, path)
            info = z.getinfo("schema.json")
            if info.file_size > MAX_SCHEMA_BYTES:
                raise _invalid(path, f"its schema declares {info.file_size:,} bytes (at most {MAX_SCHEMA_BYTES:,})")
            with z.open(info) as f:
                text = f.read(MAX_SCHEMA_BYTES + 1)
            if len(text) > MAX_SCHEMA_BYTES:
                raise _invalid(path, "its schema is larger than it declares")
            schema = json.loads(text)
    except EmodetectError:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, RecursionError, EOFError, RuntimeError) as exc:
        raise _invalid(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    pairs = skops_nodes(schema)
    bad = sorted(f"{t} ({loader})" for loader, t in pairs - SKOPS_ALLOWED)
    if bad:
        raise EmodetectError(f"{path} contains types that are not allowed in an emodetect model: {', '.join(bad[:8])}")
    return sorted({t for _, t in pairs})


def _check_npy_header(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """A .npy member must hold what its header declares: no object arrays, no absurd shapes."""
    from numpy.lib import format as npy

    with z.open(info) as f:
        version = npy.read_magic(f)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise _invalid(path, f"member {info.filename[:60]!r} holds Python objects")
    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > info.file_size:
        raise _invalid(path, f"member {info.filename[:60]!r} declares more data than it holds")


def _check_pipeline(pipe, meta: dict, path: Path) -> None:
    """The pipeline must be the one its model name builds, step by step and type by type, with inputs and
    decision trees that fit; scikit-learn trusts tree indices at inference (an out-of-range one crashes)."""
    from emodetect.models.registry import create_model

    fresh = create_model(meta["model"])
    names = [n for n, _ in getattr(pipe, "steps", [])]
    if names != [n for n, _ in fresh.steps] or any(type(a) is not type(b) for (_, a), (_, b) in zip(pipe.steps, fresh.steps)):
        raise _invalid(path, f"its pipeline does not have the layout of model {meta['model']!r}")
    for _, step in pipe.steps:  # hyperparameters within scikit-learn's (and our) own bounds
        if hasattr(step, "_validate_params"):
            try:
                step._validate_params()
            except Exception as exc:
                raise _invalid(path, f"step {type(step).__name__}: {str(exc).splitlines()[0][:150]}") from None
    pre = meta["preprocess"]
    n_in = pre["size"] * pre["size"] * (1 if pre["mode"] == "gray" else 3)
    first = pipe.steps[0][1]
    if getattr(first, "n_features_in_", n_in) != n_in or getattr(first, "size", pre["size"]) != pre["size"]:
        raise _invalid(path, "its pipeline does not take the input its description states")
    try:  # the width the classifier sees, from a blank row through the transforming steps (numpy only)
        width = pipe[:-1].transform(np.zeros((1, n_in), np.float32)).shape[1] if len(pipe.steps) > 1 else n_in
    except Exception as exc:
        raise _invalid(path, f"its transforming steps cannot run ({type(exc).__name__})") from None
    clf = pipe.steps[-1][1]
    classes = np.asarray(getattr(clf, "classes_", []))
    if classes.dtype.kind not in "iu" or len(classes) < 2 or len(set(classes.tolist())) != len(classes) or \
            classes.min() < 0 or classes.max() >= len(meta["classes"]) or getattr(clf, "n_features_in_", width) != width:  # fmt: skip
        raise _invalid(path, "its classifier's classes or input width do not fit the model")
    for est in getattr(clf, "estimators_", []):
        _check_tree(getattr(est, "tree_", None), width, path)


def _check_tree(tree, width: int, path: Path) -> None:
    """Node indices inside the tree and pointing forward; feature indices below the real input width."""
    from sklearn.tree._tree import Tree

    if type(tree) is not Tree:
        raise _invalid(path, "a forest holds something other than a decision tree")
    n = tree.node_count
    left, right, feat = tree.children_left, tree.children_right, tree.feature
    idx = np.arange(n)
    leaf = left == -1
    ok = tree.n_features == width and tree.n_outputs == 1 and len(left) == len(right) == len(feat) == n
    ok = ok and tree.value.shape[0] == n and np.array_equal(leaf, right == -1)
    ok = ok and bool(((left > idx) & (left < n) | leaf).all() and ((right > idx) & (right < n) | leaf).all())
    ok = ok and bool(((feat >= 0) & (feat < width) | leaf).all())
    if not ok:
        raise _invalid(path, "a decision tree has out-of-range nodes or features")


def _load_pipeline(path: Path) -> Artifact:
    import skops.io as sio
    from sklearn.pipeline import Pipeline

    trusted = _check_skops_archive(path)
    try:
        obj = sio.load(path, trusted=trusted)
    except MemoryError:
        raise _invalid(path, "it declares more data than fits in memory") from None
    except Exception as exc:  # skops raises many types on a corrupt file; all mean the same to a user
        raise _invalid(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("pipeline"), Pipeline) or not isinstance(obj.get("meta"), str):
        raise _invalid(path, "expected a scikit-learn Pipeline and its description")
    try:
        meta = json.loads(obj["meta"])
    except (ValueError, RecursionError):
        raise _invalid(path, "its description is not JSON") from None
    validate_meta(meta, "sklearn", path)
    _check_pipeline(obj["pipeline"], meta, path)
    return _smoke_tested(Artifact(obj["pipeline"], meta, path))
