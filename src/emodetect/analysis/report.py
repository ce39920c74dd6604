"""`emodetect embed`: embedding analysis of a trained run, written next to it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emodetect.analysis.embeddings import analyse
from emodetect.data import load_dataset
from emodetect.errors import EmodetectError
from emodetect.labels import CLASSES
from emodetect.models.artifact import load_artifact


def embed_run(run_dir, data=None, split: str = "test", cache_dir=None, max_images: int | None = None) -> dict:
    from emodetect import plots
    from emodetect.models.predict import Predictor
    from emodetect.runs import model_path

    run_dir = Path(run_dir)
    artifact = load_artifact(model_path(run_dir))
    data = data or artifact.meta.get("source")
    if data is None:
        raise EmodetectError(f"{run_dir}: the run does not record its dataset; pass --data")
    d = artifact.meta.get("data", {})
    ds = load_dataset(data, mode=artifact.preprocess.mode, label_source=artifact.meta.get("label_source", "folder"),
                      relfcs_max=d.get("relfcs_max"), seed=d.get("split_seed", 0), cache_dir=cache_dir,
                      progress=False).subset(split)  # fmt: skip
    if len(ds) < 2:
        raise EmodetectError(f"the {split} split of {data} has {len(ds)} images with these settings; nothing to embed")
    if max_images is not None and len(ds) > max_images:
        ds = ds.subset(np.random.default_rng(0).choice(len(ds), max_images, replace=False))
    emb = Predictor(artifact).embed(ds.images)
    result = analyse(emb, ds.labels)
    numbers = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
    numbers.update(model=artifact.name, split=split)
    (run_dir / "embeddings.json").write_text(json.dumps(numbers, indent=1))
    fig = plots.scatter({"t-SNE": result["tsne"], "UMAP": result["umap"]},
                        {"true label": ds.labels, "K-Means cluster": result["assignments"]}, CLASSES,
                        title=f"{artifact.name}: {split} embeddings (ARI {result['ari']:.3f}, NMI {result['nmi']:.3f})")  # fmt: skip
    plots.save(fig, run_dir / "embeddings.png")
    return {**numbers, "tsne": result["tsne"], "umap": result["umap"], "labels": ds.labels}
