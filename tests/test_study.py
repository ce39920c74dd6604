"""`emodetect study`: config validation, resumable stages, the report, and the quick preset on the real zip."""

import json
import re

import pytest

from conftest import make_dataset
from emodetect import runs
from emodetect.cli import main
from emodetect.errors import EmodetectError
from emodetect.study import PRESETS, resolve_study_config, run_study

# the tiny synthetic study: one classical model and one tiny network, everything else dropped
TINY = {
    "models": {**{n: None for n in PRESETS["full"]["models"]},
               "logreg": {"pca__n_components": 8, "clf__max_iter": 200},
               "tiny": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0}},
    "embeddings": {"models": ["logreg", "best_network"], "max_images": 200},
}  # fmt: skip
SECTIONS = ("## Observations", "## Results", "### Per-class F1", "## Confusion matrices", "## Training curves",
            "## Calibration", "## Ensembles", "## Embeddings", "## Misclassified faces", "## Data", "## Reproducibility")  # fmt: skip


def test_config_errors_are_caught_before_any_work():
    with pytest.raises(EmodetectError, match="unknown preset 'huge'"):
        resolve_study_config("huge")
    with pytest.raises(EmodetectError, match="unknown model 'vgg99'; available: .*cnn_seed"):
        resolve_study_config("quick", {"models": {"vgg99": {}}})
    with pytest.raises(EmodetectError, match="epochz"):
        resolve_study_config("quick", {"models": {"cnn_seed": {"epochz": 3}}})
    with pytest.raises(EmodetectError, match="unknown key 'model'"):
        resolve_study_config("quick", {"model": {}})
    cfg = resolve_study_config("full", {"models": {"random_forest": None, "cnn_seed": {"epochs": 3}}})
    assert "random_forest" not in cfg.raw["models"] and cfg.raw["models"]["cnn_seed"]["epochs"] == 3
    assert cfg.models["cnn_seed"].params.epochs == 3  # resolved once, passed down as is


def test_cli_study_bad_input_is_one_line(tmp_path, capsys):
    assert main(["study", "--data", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emodetect: error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"nope": {}}}))
    assert main(["study", "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--config", str(bad)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing was started


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("study") / "s"
    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    other = out.parent / "other"
    make_dataset(other, n_per_class=5, seed=9, classes=("angry", "happy", "sad"), with_csv=False)
    result = run_study(data, out, preset="quick", config=TINY, cache_dir=cache, eval_data=[f"other={other}"],
                       log=lambda m: None)  # fmt: skip
    return out, data, cache, result


def test_tiny_study_writes_every_section(tiny_study):
    out, _, _, result = tiny_study
    md = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in md, section
    assert set(result["models"]) == {"logreg", "tiny"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["tiny"]["test"]["accuracy"] == result["models"]["tiny"]["test"]["accuracy"]
    assert "cnn_svm" in metrics["ensembles"] and set(metrics["embeddings"]) == {"logreg", "tiny"}
    cross = metrics["cross_dataset"]["other"]
    assert set(cross) == {"logreg", "tiny"} and cross["tiny"]["n_images"] == 15
    assert set(cross["tiny"]["per_class"]) == {"anger", "happy", "sad"}  # scored on the classes it has
    assert "## Other datasets, zero-shot" in (out / "report.md").read_text()


def test_report_html_is_self_contained(tiny_study):
    out = tiny_study[0]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)  # no external file or URL references
    assert "http://" not in html and "https://" not in html


def test_rerun_reuses_finished_stages_and_redoes_changed_ones(tiny_study, monkeypatch):
    out, data, cache, first = tiny_study
    (out / "report.md").unlink()  # as if killed before the report
    (out / "ensembles" / "stage.json").unlink()  # ... and during the ensembles
    calls = []
    real_train = runs.train
    monkeypatch.setattr(runs, "train", lambda model, *a, **k: calls.append(model.name) or real_train(model, *a, **k))
    second = run_study(data, out, preset="quick", config=TINY, cache_dir=cache, log=lambda m: None)
    assert calls == []  # no model retrained
    assert (out / "report.md").exists() and "cnn_svm" in second["ensembles"]
    assert second["models"]["tiny"]["test"] == first["models"]["tiny"]["test"]
    changed = {**TINY, "models": {**TINY["models"], "logreg": {"pca__n_components": 6, "clf__max_iter": 200}}}
    run_study(data, out, preset="quick", config=changed, cache_dir=cache, log=lambda m: None)
    assert calls == ["logreg"]  # only the changed model
    # other data options: every model afresh, never resumed from a finished checkpoint trained on other labels
    calls.clear()
    monkeypatch.setattr(runs, "train", lambda model, *a, **k: calls.append((model.name, k["resume"])) or
                        real_train(model, *a, **k))  # fmt: skip
    run_study(data, out, preset="quick", config={**changed, "data": {"label_source": "csv"}}, cache_dir=cache,
              log=lambda m: None)  # fmt: skip
    assert sorted(calls) == [("logreg", False), ("tiny", False)]


@pytest.mark.real_data
def test_quick_preset_end_to_end_on_the_real_zip(tmp_path, real_zip, real_cache):
    """The quick preset on the shared zip: every stage, every model, every report section."""
    result = run_study(real_zip, tmp_path / "quick", preset="quick", cache_dir=real_cache, log=lambda m: None)
    assert set(result["models"]) == set(PRESETS["quick"]["models"])
    md = (tmp_path / "quick" / "report.md").read_text()
    for section in SECTIONS:
        assert section in md, section
    for name in PRESETS["quick"]["models"]:
        assert f"| {name} |" in md
        assert 0 <= result["models"][name]["test"]["accuracy"] <= 1
    assert result["audit"]["n_images"] == 21861
    # rendered faces and the file-format check come from the user's data at run time
    assert (tmp_path / "quick" / "figures" / "confused_faces.png").stat().st_size > 0
    best = max(result["models"], key=lambda n: result["models"][n]["val"]["accuracy"])
    assert set(result["models"][best]["test"]["by_format"]) >= {"jpeg", "png"}
