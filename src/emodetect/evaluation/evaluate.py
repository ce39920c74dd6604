"""`emodetect evaluate`: score any model file on any dataset in the class-folder layout."""

from __future__ import annotations

from pathlib import Path

from emodetect.data import load_dataset
from emodetect.data.split import SPLITS
from emodetect.errors import EmodetectError
from emodetect.evaluation.metrics import classification_metrics
from emodetect.models.artifact import Artifact, load_artifact


def resolve_model(model: str | Path | None) -> Artifact:
    """A model file, a run directory, or None for the model that ships with the package."""
    if model is None:
        from emodetect import load_model

        return load_model().artifact
    path = Path(model)
    if path.is_dir():
        from emodetect.runs import model_path

        path = model_path(path)
    return load_artifact(path)


def evaluate_model(model, data, *, split: str = "auto", label_source: str = "folder", relfcs_max=None,
                   split_seed: int = 0, cache_dir=None, log=None) -> dict:  # fmt: skip
    """Metrics of `model` on `data`. split 'auto' scores the stored test split when the data is the one the
    model was trained on (scoring its training images would flatter it), and every image otherwise."""
    from emodetect.models.predict import Predictor

    artifact = resolve_model(model)
    ds = load_dataset(data, mode=artifact.preprocess.mode, label_source=label_source, relfcs_max=relfcs_max,
                      seed=split_seed, cache_dir=cache_dir, progress=log is not None)  # fmt: skip
    if split == "auto":
        same = ds.info["fingerprint"] == artifact.meta.get("fingerprint")
        split = "test" if same else "all"
        if same and log:
            log(f"{data} is the model's training data: scoring its stored test split (--split all to override)")
    if split != "all":
        if split not in SPLITS:
            raise EmodetectError(f"unknown split {split!r}")
        ds = ds.subset(split)
    predictor = Predictor(artifact)
    pred = predictor.predict(ds.images)
    result = classification_metrics(ds.labels, pred)
    result.update(model=artifact.name, model_file=str(artifact.path), label_source=label_source, split=split,
                  data=str(data), model_label_source=artifact.meta.get("label_source"))  # fmt: skip
    return result
