"""The `emodetect` command: thin subcommands, each one library call."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from emodetect import __version__
from emodetect.errors import EmodetectError, printable


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one `--help` away), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _folder_arg(path: Path | None, flag: str) -> None:
    """A folder the command will write into: it may not exist yet, but neither it nor a parent may be a file."""
    if path is None:
        return
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise EmodetectError(f"{flag} {path}: {p} is a file; give a folder")
            break


def _print_warnings(info: dict) -> None:
    for w in info.get("warnings", []):
        print(f"warning: {printable(w)}", file=sys.stderr)


def _add_data_options(p: argparse.ArgumentParser, mode_default: str | None = "gray", seed_default: int | None = 0) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--label-source", choices=("folder", "csv"), default="folder",
                   help="folder labels (default) or the labels.csv re-labelling")  # fmt: skip
    g.add_argument("--relfcs-max", type=float, default=None, metavar="X",
                   help="drop low-detail images whose relFCs is above X")  # fmt: skip
    if mode_default is not None:
        g.add_argument("--mode", choices=("gray", "rgb"), default=mode_default, help="colour mode of the cache")
    g.add_argument("--split-seed", type=_seed, default=seed_default, help="seed of the stored train/val/test split "
                   + ("(default 0)" if seed_default == 0 else "(default: the one the model was trained with)"))  # fmt: skip
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="where decoded images are cached (default $EMODETECT_CACHE or ~/.cache/emodetect)")  # fmt: skip


def _data_kwargs(args, **override) -> dict:
    kw = dict(
        label_source=args.label_source,
        relfcs_max=args.relfcs_max,
        seed=args.split_seed,
        cache_dir=args.cache_dir,
        mode=getattr(args, "mode", "gray"),
    )
    kw.update(override)
    return kw


def cmd_ingest(args) -> int:
    from emodetect.data import load_dataset
    from emodetect.data.split import SPLITS

    ds = load_dataset(args.data, **_data_kwargs(args))
    info = ds.info
    _print_warnings(info)
    counts = {s: ds.subset(s).class_counts() for s in SPLITS}
    print(f"{'loaded from cache' if info['from_cache'] else 'ingested'} {len(ds):,} images "
          f"({info['mode']}, {info['size']}x{info['size']}, labels: {info['label_source']}) in {info['seconds']:.2f} s")  # fmt: skip
    print(f"cache: {info['cache']}")
    w = max(len(c) for c in ds.classes)
    print(f"{'class':<{w}} " + " ".join(f"{s:>7}" for s in SPLITS) + "   total")
    for k, c in enumerate(ds.classes):
        row = [counts[s][k] for s in SPLITS]
        print(f"{c:<{w}} " + " ".join(f"{v:>7,}" for v in row) + f" {sum(row):>7,}")
    print(f"{'total':<{w}} " + " ".join(f"{counts[s].sum():>7,}" for s in SPLITS) + f" {len(ds):>7,}")
    if info["n_dropped_no_csv_row"]:
        print(f"dropped {info['n_dropped_no_csv_row']:,} images without a labels.csv row")
    if info["n_dropped_relfcs"]:
        print(f"dropped {info['n_dropped_relfcs']:,} images with relFCs > {info['relfcs_max']}")
    if info["unreadable"]:
        reasons = info.get("unreadable_reasons") or dict.fromkeys(info["unreadable"], "unreadable")
        print(f"skipped {len(reasons)} unreadable images:")
        for path, why in list(reasons.items())[:10]:
            print(f"  {printable(path)}: {printable(why)}")
        if len(reasons) > 10:
            print(f"  ... and {len(reasons) - 10} more")
    if info["n_ignored_files"]:
        print(f"ignored {info['n_ignored_files']} non-image files or images outside class folders")
    return 0


def cmd_audit(args) -> int:
    from emodetect.data import load_dataset
    from emodetect.data.audit import write_audit

    _folder_arg(args.out, "--out")
    ds = load_dataset(args.data, mode="gray", seed=args.split_seed, cache_dir=args.cache_dir)
    _print_warnings(ds.info)
    audit = write_audit(ds, args.out)
    if args.json:
        print(json.dumps(audit, indent=2))
        return 0
    c = audit["csv"]
    print(f"{audit['n_images']:,} images, {audit['n_unreadable']} unreadable; folder vs CSV agreement "
          f"{100 * (c['agreement'] or 0):.1f}%; {c['n_images_without_row']} without a CSV row")  # fmt: skip
    for kind, d in audit["duplicates"].items():
        print(f"{kind} duplicates: {d['n_groups']} groups, {d['n_images']} images, {d['n_groups_across_classes']} across classes")
    if audit["formats"]["warning"]:
        print("warning: " + audit["formats"]["warning"])
    print(f"report: {Path(args.out) / 'audit.md'}")
    return 0


def _data_config(args):
    from emodetect.config import DataConfig

    return DataConfig(label_source=args.label_source, relfcs_max=args.relfcs_max, split_seed=args.split_seed,
                      limit_per_class=getattr(args, "limit_per_class", None))  # fmt: skip


def cmd_train(args) -> int:
    from emodetect.config import load_json, parse_overrides
    from emodetect.data.dataset import parse_sources
    from emodetect.models.registry import resolve_model_config
    from emodetect.runs import train

    _folder_arg(args.out, "--out")
    params = load_json(args.config) if args.config else {}
    params.update(parse_overrides(args.set))
    model = resolve_model_config(args.model, params)  # every option checked before any data is read
    data_cfg = _data_config(args)
    result = train(model, parse_sources(args.data), args.out, data_cfg=data_cfg, resume=args.resume,
                   cache_dir=args.cache_dir)  # fmt: skip
    for split in ("val", "test"):
        m = result[split]
        print(f"{split:>4}: accuracy {m['accuracy']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  "
              f"macro-F1 {m['macro_f1']:.4f}  ({m['n_images']:,} images)")  # fmt: skip
    print(f"model and report: {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from emodetect.data.dataset import parse_sources
    from emodetect.runs import evaluate_model

    result = evaluate_model(args.model, parse_sources(args.data), split=args.split, data_cfg=_data_config(args),
                            cache_dir=args.cache_dir, corruptions=args.corruptions,
                            log=lambda msg: print(msg, file=sys.stderr))  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} on {result['n_images']:,} images ({result['split']}, {result['label_source']} labels): "
              f"accuracy {result['accuracy']:.4f}, balanced accuracy {result['balanced_accuracy']:.4f}, "
              f"macro-F1 {result['macro_f1']:.4f}")  # fmt: skip
        for c, v in result["per_class"].items():
            print(f"  {c:<9} precision {v['precision']:.3f}  recall {v['recall']:.3f}  f1 {v['f1']:.3f}  n={v['support']}")
        if len(result["by_source"]) > 1:
            print("  by dataset: " + ", ".join(f"{s} {v['accuracy']:.4f} (n={v['n_images']:,})"
                                               for s, v in result["by_source"].items()))  # fmt: skip
        if len(result["by_format"]) > 1:
            print("  by file format: " + ", ".join(f"{f} {v['accuracy']:.4f} (n={v['n']:,})"
                                                   for f, v in result["by_format"].items()))  # fmt: skip
        for s, v in result["by_source"].items():
            for c, cells in v.get("by_format_within_class", {}).items():
                print(f"  {s}, {c} by file format: " + ", ".join(f"{f} {x['accuracy']:.4f} (n={x['n']:,})"
                                                                for f, x in cells.items()))  # fmt: skip
        for name, v in result.get("robustness", {}).items():
            change = v["accuracy"] - result["robustness"]["clean"]["accuracy"]
            print(f"  {name:<10} accuracy {v['accuracy']:.4f} ({100 * change:+.1f} points)")
    return 0


def cmd_embed(args) -> int:
    from emodetect.runs import embed_run

    result = embed_run(args.run_dir, data=args.data, split=args.split, cache_dir=args.cache_dir)
    print(f"{result['model']} {result['split']} embeddings ({result['n_images']:,} images, {result['dims']} dims): "
          f"K-Means k={result['k']}  ARI {result['ari']:.3f}  NMI {result['nmi']:.3f}  "
          f"silhouette {result['silhouette_clusters']:.3f} (clusters) / {result['silhouette_true_labels']:.3f} (true labels)")  # fmt: skip
    print(f"plots and numbers: {args.run_dir}")
    return 0


def cmd_study(args) -> int:
    from emodetect.config import load_json
    from emodetect.study import run_study

    _folder_arg(args.out, "--out")
    config = load_json(args.config) if args.config else None
    result = run_study(args.data, args.out, preset=args.preset, config=config, cache_dir=args.cache_dir,
                       eval_data=args.eval_data or ())  # fmt: skip
    print(f"{'model':<20} {'accuracy':>9} {'macro-F1':>9}   (test split)")
    for name, m in sorted(result["models"].items(), key=lambda kv: -kv[1]["val"]["accuracy"]):
        print(f"{name:<20} {m['test']['accuracy']:>9.4f} {m['test']['macro_f1']:>9.4f}")
    return 0


def cmd_predict(args) -> int:
    from emodetect.inference.analyze import Analyzer
    from emodetect.inference.predict import OUTPUT_FORMATS, expand_inputs, predict_paths

    checks = ((args.fps is None or args.fps > 0, "--fps must be above 0"), (args.smooth >= 0, "--smooth must be >= 0"),
              (args.detect_every >= 1, "--detect-every must be at least 1"),
              (0 <= args.min_confidence <= 1, "--min-confidence must be between 0 and 1"),
              (args.min_face_size >= 12, "--min-face-size must be at least 12 pixels"),
              (args.max_faces is None or args.max_faces >= 1, "--max-faces must be at least 1"),
              (args.out is None or args.out.suffix.lower() in OUTPUT_FORMATS, f"--out must end in {', '.join(OUTPUT_FORMATS)}"))  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise EmodetectError(message)
    paths = expand_inputs(args.inputs)  # missing files and empty folders are reported before any model loads
    for flag in ("out", "annotate", "timeline"):
        target = getattr(args, flag)
        if target is not None:
            _folder_arg(target.parent if target.suffix else target, f"--{flag}")
    analyzer = Analyzer(args.model, args.detector, min_face_size=args.min_face_size,
                        min_confidence=args.min_confidence, max_faces=args.max_faces)  # fmt: skip
    summary = predict_paths([str(p) for p in paths], analyzer=analyzer, out=args.out, annotate=args.annotate,
                            timeline=args.timeline, fps=args.fps, smooth_s=args.smooth, detect_every=args.detect_every)  # fmt: skip
    where = f"; results: {args.out}" if args.out else ""
    lost = f", {summary.n_lost_frames} video(s) with lost frames" if summary.n_lost_frames else ""
    print(f"{summary.n_inputs} file(s), {summary.n_faces} face(s), {summary.n_errors} unreadable{lost}{where}",
          file=sys.stderr)
    if summary.n_read == 0:
        raise EmodetectError("no input could be read (each one's reason is in its error row)")
    return 0


def cmd_export(args) -> int:
    from emodetect.models.artifact import resolve_artifact
    from emodetect.models.export import export_onnx, onnx_metadata

    if args.onnx.suffix.lower() != ".onnx":
        raise EmodetectError(f"--onnx must name an .onnx file, got {args.onnx}")
    if args.int8 is not None and args.data is None:
        raise EmodetectError("--int8 needs --data: the quantised copy is calibrated on it and kept only if it costs at "
                             "most 0.5 points of validation accuracy")  # fmt: skip
    if args.int8 is not None and args.int8.resolve() == args.onnx.resolve():
        raise EmodetectError("--int8 must name another file than --onnx (the int8 copy is deleted when it is not kept)")
    for target in (args.onnx, args.int8):
        if target is not None:
            _folder_arg(target.parent, "--onnx/--int8")
    artifact = resolve_artifact(args.model)
    data = export_onnx(artifact, args.onnx)
    meta = onnx_metadata(artifact)
    print(f"wrote {args.onnx} ({len(data) / 1e6:.2f} MB, opset 17, input uint8 (N, {meta['preprocess']['size']}, "
          f"{meta['preprocess']['size']}, {1 if meta['preprocess']['mode'] == 'gray' else 3}), outputs probabilities and logits)")  # fmt: skip
    if args.int8 is not None:
        from emodetect.runs import quantize_and_check

        report = quantize_and_check(artifact, data, args.int8, args.data, cache_dir=args.cache_dir)
        stale = not report["kept"] and args.int8.is_file()
        if stale:  # an earlier export's graph must not stay beside this model as if it were its own
            args.int8.unlink()
        print(f"int8: validation accuracy {report['val_int8_accuracy']:.4f} against {report['val_fp32_accuracy']:.4f} "
              f"in fp32 ({100 * report['val_change']:+.2f} points on {report['n_val_images']:,} images; test "
              f"{100 * report['change']:+.2f} points on {report['n_images']:,}); "
              + (f"kept: {args.int8} ({report['bytes'] / 1e6:.2f} MB)" if report["kept"] else
                 "not kept (it costs more than 0.5 points on validation)"
                 + (f"; the earlier {args.int8} was removed" if stale else "")))  # fmt: skip
    return 0


def cmd_serve(args) -> int:
    try:
        from emodetect.serve.server import serve
    except ModuleNotFoundError as exc:
        raise EmodetectError(f'`emodetect serve` needs the serve extra: pip install "emodetect[serve]" '
                             f"({exc.name} is missing)") from None  # fmt: skip
    checks = ((0 <= args.port <= 65535, "--port must be between 0 and 65535"),
              (args.workers is None or args.workers >= 1, "--workers must be at least 1"),
              (args.queue >= 0, "--queue must be 0 or more"),
              (0 < args.max_upload_mb <= 10_000, "--max-upload-mb must be above 0 and at most 10000"))  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise EmodetectError(message)
    serve(args.host, args.port, args.model, args.detector, token=args.token or os.environ.get("EMODETECT_TOKEN") or None,
          cors=args.cors, max_upload_bytes=round(args.max_upload_mb * 1_000_000), workers=args.workers,
          queue=args.queue, access_log=not args.no_access_log)  # fmt: skip
    return 0


def cmd_ship(args) -> int:
    from emodetect.ship import WEIGHTS_DIR, ship

    _folder_arg(args.dest, "--dest")
    ship(args.run_dir, args.dest or WEIGHTS_DIR, name=args.name, data=args.data, cache_dir=args.cache_dir,
         command=args.command_note or "", int8=args.int8)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emodetect", description="Facial emotion recognition: study, models and predictions.")
    parser.add_argument("--version", action="version", version=f"emodetect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("ingest", help="decode a dataset into the cache and store its split")
    p.add_argument("data", type=Path, help="Kaggle zip or a folder in the same layout")
    _add_data_options(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("audit", help="write a data report (counts, label agreement, duplicates, formats)")
    p.add_argument("data", type=Path, help="Kaggle zip or a folder in the same layout")
    p.add_argument("--out", type=Path, required=True, help="output folder for audit.md, audit.json and plots")
    p.add_argument("--json", action="store_true", help="print the audit numbers as JSON")
    p.add_argument("--split-seed", type=_seed, default=0)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("train", help="train a model by name; writes the model, metrics and plots to --out")
    p.add_argument("model", help="model name, e.g. logreg, random_forest, mlp, hog_lbp_svm, cnn_seed")
    p.add_argument("--data", action="append", required=True, metavar="[NAME=]DATA",
                   help="Kaggle zip or a folder in the same layout; repeat it to train on several datasets at once")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--config", type=Path, help="JSON file of hyperparameters")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one hyperparameter (repeatable), e.g. --set clf__C=0.5 or --set epochs=10")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an interrupted network training from its checkpoint")
    p.add_argument("--limit-per-class", type=int, default=None, help="train on at most N images per class (quick runs)")
    _add_data_options(p, mode_default=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a model on a dataset (default: the shipped model)")
    p.add_argument("--model", default=None, help="a shipped model (default, fast), a model file (.safetensors, .skops) "
                                                  "or a run directory (default: the shipped default model)")  # fmt: skip
    p.add_argument("--data", action="append", required=True, metavar="[NAME=]DATA",
                   help="Kaggle zip or a folder in the same layout; repeat it to score several datasets as one")  # fmt: skip
    p.add_argument("--split", choices=("auto", "all", "train", "val", "test"), default="auto",
                   help="images to score; auto: the stored test split of each of the model's own training datasets, "
                        "every image of any other")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--corruptions", action="store_true",
                   help="also score under grayscale, 48 px, JPEG 30, blur, noise, rotation and off-centre framing")  # fmt: skip
    _add_data_options(p, mode_default=None, seed_default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("embed", help="K-Means, t-SNE and UMAP of a trained model's test-split embeddings")
    p.add_argument("run_dir", type=Path, help="a run directory written by `emodetect train`")
    p.add_argument("--data", action="append", default=None, metavar="[NAME=]DATA",
                   help="the run's dataset where it has moved (repeat it, named as in training, for several; "
                        "default: the recorded one)")  # fmt: skip
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("study", help="run the whole comparison (data, classical, networks, ensembles, embeddings) "
                                     "and write report.md, report.html and metrics.json")  # fmt: skip
    p.add_argument("--data", type=Path, required=True, help="Kaggle zip or a folder in the same layout")
    p.add_argument("--out", type=Path, required=True, help="study folder (re-running continues where it stopped)")
    p.add_argument("--preset", choices=("quick", "full"), default="full",
                   help="full: the real study; quick: the same code paths on 150 images per class (minutes)")  # fmt: skip
    p.add_argument("--config", type=Path, help="JSON file on top of the preset: data, models, ensembles, embeddings")
    p.add_argument("--eval-data", action="append", metavar="[NAME=]DATA",
                   help="also score every model, as it is, on this dataset (repeatable), e.g. the FER2013 zip")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, default=None)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("predict", help="the emotion of every face in photos, folders, globs and videos")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders (searched recursively), globs")
    p.add_argument("--out", type=Path, default=None, help="write the rows to FILE.csv, FILE.jsonl or FILE.json "
                                                          "(default: a table on the terminal)")  # fmt: skip
    p.add_argument("--model", default="default", help="default, fast, a model file or a run folder")
    p.add_argument("--detector", choices=("mtcnn", "haar"), default="mtcnn", help="face detector (default mtcnn)")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="X",
                   help="label a face 'uncertain' when its top probability is below X (probabilities kept)")  # fmt: skip
    p.add_argument("--min-face-size", type=int, default=40, metavar="PX", help="smallest face to find, in pixels of the image as the detector sees it: photos "
                   "over 1600 px on their longer side are scaled down to 1600 first (default 40)")
    p.add_argument("--max-faces", type=int, default=None, metavar="N", help="at most N faces per image, largest first")
    p.add_argument("--annotate", type=Path, default=None, metavar="DIR|OUT.mp4",
                   help="write copies with boxes and labels: a folder for photos, an .mp4 (or a folder) for videos")  # fmt: skip
    p.add_argument("--timeline", type=Path, default=None, metavar="DIR|OUT.png",
                   help="for videos: a PNG of each track's smoothed emotions over time")  # fmt: skip
    p.add_argument("--fps", type=float, default=None, help="videos: analyse N frames per second (default: every frame)")
    p.add_argument("--smooth", type=float, default=0.5, metavar="SECONDS",
                   help="videos: time constant of the per-track moving average (0: none; default 0.5)")  # fmt: skip
    p.add_argument("--detect-every", type=int, default=1, metavar="K",
                   help="videos: detect faces on every K-th analysed frame, track them in between (default 1)")  # fmt: skip
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="a network as an ONNX graph (uint8 faces in, calibrated probabilities out)")
    p.add_argument("model", help="default, fast, a model file or a run folder")
    p.add_argument("--onnx", type=Path, required=True, metavar="OUT.onnx")
    p.add_argument("--int8", type=Path, default=None, metavar="OUT.onnx",
                   help="also a statically quantised int8 copy, kept only if it loses <= 0.5 points (needs --data)")  # fmt: skip
    p.add_argument("--data", action="append", default=None, metavar="[NAME=]DATA",
                   help="dataset for int8 calibration (train split) and its accuracy check (validation split; the test change is printed)")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="an HTTP API and a web page (photos, live webcam) on this machine")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model", default="default", help="default, fast, a model file or a run folder")
    p.add_argument("--detector", choices=("mtcnn", "haar"), default="mtcnn", help="face detector (default mtcnn)")
    p.add_argument("--token", default=None, help="every /v1 call must send 'Authorization: Bearer TOKEN' "
                                                 "(default: $EMODETECT_TOKEN, else none)")  # fmt: skip
    p.add_argument("--cors", action="append", default=None, metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. https://example.org) call the API; repeatable (default: none)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB", help="largest upload (default 10 MB)")
    p.add_argument("--workers", type=int, default=None, help="inference threads (default: one per CPU core)")
    p.add_argument("--queue", type=int, default=32, help="requests that may wait for a worker; more get 503 (default 32)")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ship", help="make a finished network run the package's default model (float16 + model card)")
    p.add_argument("run_dir", type=Path, help="a run directory written by `emodetect train`")
    p.add_argument("--dest", type=Path, default=None, help="weights folder (default: the installed package's)")
    p.add_argument("--name", choices=("default", "fast"), default="default", help="which shipped model to replace")
    p.add_argument("--data", action="append", default=None, metavar="[NAME=]DATA",
                   help="the run's dataset where it has moved (repeat it, named as in training, for several; "
                        "default: the recorded one)")  # fmt: skip
    p.add_argument("--command-note", default=None, metavar="TEXT", help="the training command, quoted in the model card")
    p.add_argument("--int8", action="store_true", help="also an int8 ONNX graph beside the weights, which load_model "
                   "then runs (with onnxruntime); kept only if it loses <= 0.5 points of validation accuracy")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, default=None)
    p.set_defaults(func=cmd_ship)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        _folder_arg(getattr(args, "cache_dir", None), "--cache-dir")
        from emodetect.malloc import tune_malloc

        tune_malloc()  # the command line owns the process: keep freed memory for the next batch (emodetect.malloc)
        return args.func(args)
    except EmodetectError as exc:
        print(f"emodetect: error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emodetect: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("emodetect: error: out of memory", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("EMODETECT_DEBUG"):
            raise
        print(f"emodetect: internal error: {type(exc).__name__}: {printable(exc)} (set EMODETECT_DEBUG=1 for the "
              "traceback and please report it)", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
