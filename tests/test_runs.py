"""`emodetect train`, `evaluate` and `embed` end to end on the tiny synthetic dataset."""

import json

import pytest

from emodetect.cli import main
from emodetect.errors import EmodetectError
from emodetect.runs import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("run") / "tiny"
    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    result = train("tiny", data, out, params={"epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0},
                   cache_dir=cache, progress=False, log=lambda m: None)  # fmt: skip
    return out, data, cache, result


def test_train_writes_model_metrics_and_plots(tiny_run):
    out, _, _, result = tiny_run
    for name in ("model.safetensors", "metrics.json", "predictions.csv", "confusion_val.png", "confusion_test.png",
                 "per_class_f1.png", "curves.png", "reliability.png", "checkpoint.pt"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "tiny" and m["label_source"] == "folder" and len(m["history"]) == 3
    assert m["calibration"]["temperature"] > 0 and 0 <= m["calibration"]["after"]["ece"] <= 1
    for split in ("val", "test"):
        assert set(m[split]) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"}


def test_evaluate_json_has_the_documented_keys(tiny_run, capsys):
    out, data, cache, result = tiny_run
    assert main(["evaluate", "--model", str(out / "model.safetensors"), "--data", data, "--json",
                 "--cache-dir", cache]) == 0  # fmt: skip
    m = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "classes",
                "n_images", "label_source"):  # fmt: skip
        assert key in m
    assert m["split"] == "test" and m["accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert set(next(iter(m["per_class"].values()))) == {"precision", "recall", "f1", "support"}


def test_evaluate_auto_decides_dataset_by_dataset(tiny_run, tmp_path, capsys):
    """Renamed, and beside a dataset the model never saw, its training data is still scored on its own test split;
    the other one whole."""
    from conftest import make_dataset

    out, data, cache, result = tiny_run
    make_dataset(tmp_path / "other", n_per_class=3, seed=9)
    assert main(["evaluate", "--model", str(out), "--data", f"mine={data}", "--data", f"other={tmp_path / 'other'}",
                 "--json", "--cache-dir", cache]) == 0  # fmt: skip
    m = json.loads(capsys.readouterr().out)
    assert m["split"] == "mine: test, other: all"
    assert m["by_source"]["mine"]["confusion_matrix"] == result["test"]["confusion_matrix"]
    assert m["by_source"]["other"]["n_images"] == 3 * 8


def test_evaluate_auto_splits_with_the_models_own_seed(tiny_dataset, tmp_path, capsys):
    from emodetect.config import DataConfig

    data, cache = tiny_dataset.info["source"], tiny_dataset.info["cache"].rsplit("/", 1)[0]
    result = train("tiny", data, tmp_path / "seed3", params={"epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0},
                   data_cfg=DataConfig(split_seed=3), cache_dir=cache, progress=False, log=lambda m: None)  # fmt: skip
    assert main(["evaluate", "--model", str(tmp_path / "seed3"), "--data", data, "--json", "--cache-dir", cache]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["confusion_matrix"] == result["test"]["confusion_matrix"] and "split seed 3" in out.err
    assert main(["evaluate", "--model", str(tmp_path / "seed3"), "--data", data, "--json", "--cache-dir", cache,
                 "--split-seed", "0"]) == 0  # fmt: skip
    assert "split seed 0" in capsys.readouterr().err  # asked for: another split


def test_embed_writes_numbers_and_plots(tiny_run, capsys):
    out, data, cache, _ = tiny_run
    assert main(["embed", str(out), "--cache-dir", cache]) == 0
    e = json.loads((out / "embeddings.json").read_text())
    assert {"ari", "nmi", "silhouette_clusters", "k"} <= set(e) and (out / "embeddings.png").exists()


def test_a_run_whose_relative_data_path_is_not_found_from_here_asks_for_data(tiny_dataset, tmp_path, monkeypatch,
                                                                              capsys):  # fmt: skip
    import shutil

    shutil.copytree(tiny_dataset.info["source"], tmp_path / "work" / "data")
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    monkeypatch.chdir(tmp_path / "work")
    train("logreg", "data", "run", params={"pca__n_components": 5}, cache_dir=cache, progress=False, log=lambda m: None)
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "work/run", "--cache-dir", cache]) == 2
    assert "its dataset data is not found from here; pass --data PATH" in capsys.readouterr().err
    assert main(["embed", "work/run", "--data", "work/data", "--cache-dir", cache]) == 0


def test_resume_refuses_a_checkpoint_trained_on_other_data(tiny_dataset, tmp_path):
    from emodetect.config import DataConfig

    data, cache = tiny_dataset.info["source"], tiny_dataset.info["cache"].rsplit("/", 1)[0]
    quiet = dict(params={"epochs": 1, "batch_size": 16, "warmup_epochs": 0}, cache_dir=cache, progress=False,
                 log=lambda m: None)  # fmt: skip
    train("tiny", data, tmp_path / "r", **quiet)
    with pytest.raises(EmodetectError, match="trained on other data or data options"):
        train("tiny", data, tmp_path / "r", data_cfg=DataConfig(label_source="csv"), resume=True, **quiet)
    assert train("tiny", data, tmp_path / "r", resume=True, **quiet)["fit"]["epochs_run"] == 1  # the same data

    def interrupted(msg):  # a fresh run on other data, killed before its first checkpoint
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("tiny", data, tmp_path / "r", data_cfg=DataConfig(label_source="csv"),
              **{**quiet, "log": interrupted})  # fmt: skip
    with pytest.raises(EmodetectError, match="no checkpoint"):  # the earlier run's is gone, not taken as this one's
        train("tiny", data, tmp_path / "r", data_cfg=DataConfig(label_source="csv"), resume=True, **quiet)


def test_classical_run_and_unknown_names(tiny_dataset, tmp_path):
    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    r = train("logreg", data, tmp_path / "lr", params={"pca__n_components": 10}, cache_dir=cache, progress=False,
              log=lambda m: None)  # fmt: skip
    assert (tmp_path / "lr" / "model.skops").exists() and r["test"]["accuracy"] > 0.5
    with pytest.raises(EmodetectError, match="takes no option"):
        train("logreg", data, tmp_path / "x", params={"bogus": 1}, cache_dir=cache, progress=False)
    with pytest.raises(EmodetectError, match="unknown model 'nope'.*available"):
        train("nope", data, tmp_path / "y", cache_dir=cache, progress=False)


def test_a_margin_classifier_trains_on_two_classes(tmp_path):
    from conftest import make_dataset

    make_dataset(tmp_path / "two", n_per_class=30, seed=1, classes=("happy", "sad"))
    r = train("hog_lbp_svm", tmp_path / "two", tmp_path / "svm", cache_dir=tmp_path / "cache", progress=False,
              log=lambda m: None)  # fmt: skip
    assert r["test"]["n_images"] > 0 and r["test"]["accuracy"] > 0.5  # synthetic happy and sad faces differ


def test_missing_model_file_is_a_clear_cli_error(tmp_path, tiny_dataset, capsys):
    rc = main(["evaluate", "--model", str(tmp_path / "missing.safetensors"), "--data", tiny_dataset.info["source"]])
    assert rc == 2 and "model file not found" in capsys.readouterr().err


def test_metrics_have_sources_formats_and_robustness(tiny_run):
    from emodetect.data.transforms import CORRUPTIONS

    out, _, _, result = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["robustness"]) == {"clean", *CORRUPTIONS}
    assert m["robustness"]["clean"]["accuracy"] == pytest.approx(m["test"]["accuracy"])
    assert set(m["test"]["by_format"]) == {"jpeg", "png"} and list(m["test"]["by_source"]) == ["data"]
    data = m["test"]["by_source"]["data"]  # per dataset too, with the formats within each class (test_metrics)
    assert data["by_format"] == m["test"]["by_format"] and isinstance(data["by_format_within_class"], dict)


def test_evaluate_corruptions_scores_each_corruption(tiny_run, capsys):
    from emodetect.data.transforms import CORRUPTIONS

    out, data, cache, _ = tiny_run
    assert main(["evaluate", "--model", str(out), "--data", data, "--corruptions", "--json", "--cache-dir", cache]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(m["robustness"]) == {"clean", *CORRUPTIONS}
    assert m["robustness"]["clean"]["accuracy"] == pytest.approx(m["accuracy"])
    assert main(["evaluate", "--model", str(out), "--data", data, "--corruptions", "--cache-dir", cache]) == 0
    text = capsys.readouterr().out
    assert "lowres48" in text and "points" in text and "by file format" in text


def test_the_curves_mark_the_epoch_that_was_kept():
    from emodetect import plots

    history = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": a}
               for e, a in ((1, 0.5), (2, 0.7), (3, 0.6))]  # fmt: skip
    for best, want in ((None, 2), (3, 3)):  # kept on another monitor (macro-F1, say): epoch 3
        fig = plots.curves(history, best_epoch=best)
        marks = [line.get_xdata()[0] for line in fig.axes[1].lines if line.get_linestyle() == ":"]
        assert marks == [want]


def test_a_missing_teacher_or_starting_model_is_named_before_any_data_is_read(tmp_path):
    (tmp_path / "interrupted").mkdir()  # a run folder without its model file (say, only a checkpoint)
    for params, match in [({"teacher": ["default", str(tmp_path / "runs" / "lite2")]}, "teacher '.*lite2': model file not found"),
                          ({"teacher": str(tmp_path / "interrupted")}, "teacher '.*interrupted': no model file"),
                          ({"init_from": str(tmp_path / "base.safetensors")}, "init_from '.*base.safetensors'")]:  # fmt: skip
        with pytest.raises(EmodetectError, match=match):  # the data does not exist either: this comes first
            train("tiny", str(tmp_path / "no-data.zip"), tmp_path / "run", params=params, progress=False,
                  log=lambda m: None)  # fmt: skip
