"""Options are checked when a config is built: one clear error, before any work."""

import os

import pytest

from emodetect.cli import main
from emodetect.config import DataConfig, TrainConfig, load_json, merge, parse_overrides
from emodetect.errors import EmodetectError


@pytest.mark.parametrize("override, message", [
    ({"batch_size": 0}, "batch_size must be a whole number from 1"),
    ({"lr": "abc"}, "lr must be a number"),
    ({"epochs": 0}, "epochs must be a whole number from 1"),
    ({"epochs": 2.5}, "epochs must be a whole number"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of adam, adamw, sgd"),
    ({"monitor": "val_loss"}, "monitor"),
    ({"oversample": {"grumpy": 2}}, "oversample"),
    ({"oversample": {"fear": -1}}, "oversample"),
    ({"augment": {"rotation": "lots"}}, "rotation"),
    ({"augment": {"spin": 3}}, "unknown augment option"),
    ({"augment": {"zoom": [1.2, 0.9]}}, "low <= high"),
    ({"augment_by_source": [1]}, "augment_by_source must be an object"),
    ({"augment_by_source": {"fer": {"jpg": 0}}}, r"unknown augment_by_source\['fer'\] option"),
    ({"augment_by_source": {"fer": {"jpeg": 2}}}, "jpeg must be a number"),
    ({"augment_by_source": {"fer": 0}}, "options must be an object"),
    ({"bf16": "yes"}, "true or false"),
    ({"image_size": 30000}, "image_size"),
    ({"teacher": []}, "teacher must be a model"),
    ({"teacher": ["default", ""]}, "teacher must be a model"),
    ({"teacher": ["default", "runs/b"], "distill_views": "augmented"}, "teacher must be one model"),
    ({"nonsense": 1}, "unknown TrainConfig option"),
])  # fmt: skip
def test_bad_training_options_are_refused(override, message):
    with pytest.raises(EmodetectError, match=message):
        merge(TrainConfig(model="tiny"), override)


def test_per_dataset_augmentation_keeps_only_its_overrides_on_top_of_augment():
    cfg = merge(TrainConfig(model="tiny"), {"augment": {"jpeg": 0.5, "blur": 0.2},
                                            "augment_by_source": {"fer": {"jpeg": 0, "lowres_px": [20, 40]}}})
    assert cfg.augment_by_source == {"fer": {"jpeg": 0, "lowres_px": (20, 40)}}
    fer, other = cfg.augmentation_for("fer"), cfg.augmentation_for("affectnet")
    assert (fer.jpeg, fer.blur, fer.lowres_px) == (0, 0.2, (20, 40)) and other == cfg.augmentation()


def test_aliases_are_resolved_where_classes_are_named():
    cfg = merge(TrainConfig(model="tiny"), {"oversample": {"angry": 2, "Happiness": 1.5}})
    assert cfg.oversample == {"anger": 2.0, "happy": 1.5}


@pytest.mark.parametrize("kw, message", [
    ({"split_seed": -1}, "split_seed"), ({"label_source": "xml"}, "label_source"),
    ({"relfcs_max": 0}, "relfcs_max"), ({"limit_per_class": 0}, "limit_per_class"),
])  # fmt: skip
def test_bad_data_options_are_refused(kw, message):
    with pytest.raises(EmodetectError, match=message):
        DataConfig(**kw)


def test_config_files_must_hold_an_object(tmp_path):
    for text in ("[1, 2]", "3", '"x"', "null"):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(EmodetectError, match="must hold a JSON object"):
            load_json(tmp_path / "c.json")
    assert parse_overrides(["lr=0.1", "name=abc", "augment={\"flip\": 0}"]) == {"lr": 0.1, "name": "abc",
                                                                                "augment": {"flip": 0}}  # fmt: skip


@pytest.mark.parametrize("argv", [
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/run", "--set", "batch_size=0"],
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/run", "--set", "lr=abc"],
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/run", "--set", "epochs=0"],
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/run", "--config", "{tmp}/list.json"],
    ["ingest", "{data}", "--split-seed", "-1"],
    ["ingest", "{data}", "--cache-dir", "{tmp}/file"],
    ["audit", "{data}", "--out", "{tmp}/file"],
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/file"],
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/file/sub"],
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/run", "--resume"],  # no checkpoint to resume from
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/run", "--set", "model=evil"],
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/run", "--set", 'model_kwargs={{"width": -5}}'],
    ["train", "tiny", "--data", "{data}", "--out", "{tmp}/run", "--set", "lr=1" + "0" * 400],
    ["train", "logreg", "--data", "{data}", "--out", "{tmp}/run", "--set", "clf__C=abc"],
    ["train", "random_forest", "--data", "{data}", "--out", "{tmp}/run", "--set", "clf__n_estimators=0"],
    ["train", "hog_lbp_svm", "--data", "{data}", "--out", "{tmp}/run", "--set", "features__hog=false",
     "--set", "features__lbp=false"],
])  # fmt: skip
def test_cli_option_errors_are_one_line_exit_2_and_do_no_work(tmp_path, tiny_zip, capsys, argv):
    (tmp_path / "file").write_text("x")
    (tmp_path / "list.json").write_text("[1]")
    argv = [a.format(data=tiny_zip[0], tmp=tmp_path) for a in argv]
    code = None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error:" in err[0], err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_embed_on_an_empty_split_says_so(tmp_path, tiny_dataset, capsys):
    from emodetect.runs import train

    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    run = tmp_path / "run"
    train("tiny", data, run, params={"epochs": 1, "batch_size": 16}, cache_dir=cache, progress=False, log=lambda m: None)
    assert main(["embed", str(run), "--cache-dir", cache, "--split", "test", "--data", str(data)]) == 0
    capsys.readouterr()
    import shutil

    empty = tmp_path / "one"
    shutil.copytree(data, empty)
    for cls in list(empty.iterdir()):
        if cls.is_dir() and cls.name != "anger":
            shutil.rmtree(cls)
    for f in sorted((empty / "anger").iterdir())[1:]:
        f.unlink()
    assert main(["embed", str(run), "--data", str(empty), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "empty" in err or "nothing to embed" in err, err


def test_ship_checks_everything_before_it_writes_anything(tmp_path, tiny_dataset, capsys):
    from emodetect.runs import train

    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    run = tmp_path / "run"
    train("tiny", data, run, params={"epochs": 1, "batch_size": 16}, cache_dir=cache, progress=False, log=lambda m: None)
    dest = tmp_path / "weights"
    assert main(["ship", str(run), "--dest", str(dest), "--data", str(tmp_path / "nowhere")]) == 2
    assert not dest.exists()
    (tmp_path / "file").write_text("x")
    assert main(["ship", str(run), "--dest", str(tmp_path / "file")]) == 2
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "metrics.json").write_text("{}")
    assert main(["ship", str(broken), "--dest", str(dest), "--cache-dir", cache]) == 2
    os.remove(broken / "metrics.json")
    os.mkfifo(broken / "metrics.json")  # never read: a pipe would block
    assert main(["ship", str(broken), "--dest", str(dest), "--cache-dir", cache]) == 2
    assert not dest.exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err


def test_a_checkpoint_with_the_right_keys_and_wrong_values_is_a_clear_error(tmp_path, tiny_dataset, capsys):
    import torch

    from emodetect.runs import train

    data = tiny_dataset.info["source"]
    cache = tiny_dataset.info["cache"].rsplit("/", 1)[0]
    params = {"epochs": 2, "batch_size": 16}
    train("tiny", data, tmp_path / "run", params=params, cache_dir=cache, progress=False, log=lambda m: None)
    ck_path = tmp_path / "run" / "checkpoint.pt"
    good = torch.load(ck_path, weights_only=True)
    for key, value in (("optimizer", {}), ("model", {}), ("torch_rng", torch.zeros(3)), ("epoch", "x")):
        torch.save({**good, key: value}, ck_path)
        argv = ["train", "tiny", "--data", str(data), "--out", str(tmp_path / "run"), "--resume", "--cache-dir", cache,
                "--set", "epochs=2", "--set", "batch_size=16"]  # fmt: skip
        assert main(argv) == 2, key
        assert "does not fit this run" in capsys.readouterr().err


def test_every_committed_training_config_builds_for_the_model_it_trains():
    from pathlib import Path

    from emodetect.models.registry import resolve_model_config

    folder = Path(__file__).resolve().parents[1] / "configs"
    model_of = {"fast_model.json": "fastlite", "lite2_teacher.json": "efficientnet_lite2"}  # the rest: Lite0
    configs = sorted(folder.glob("*.json"))
    assert {"default_model.json", "fast_model.json"} <= {p.name for p in configs}
    for path in configs:  # every option is checked here, as `emodetect train --config` checks it before reading data
        resolve_model_config(model_of.get(path.name, "efficientnet_lite0"), load_json(path))
