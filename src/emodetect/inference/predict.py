"""`emodetect predict`: photos, folders, globs and videos -> one row per face, written as a table, CSV or JSON.

Rows (also the CSV columns, in this order): file, frame, time_s, face, track, x, y, w, h, face_score, label,
confidence, one probability per emotion, error. A photo without a face gives one row labelled `no_face`; a
file that cannot be read gives one row labelled `error` with the reason. The JSON forms hold the same
fields with the faces nested under their file (and, for a video, its frames and a summary per track).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from emodetect.data.decode import UnreadableImage
from emodetect.data.source import IMAGE_EXTENSIONS
from emodetect.errors import EmodetectError, FramesLost, printable
from emodetect.files import atomic_write
from emodetect.inference.analyze import Analyzer, Face, load_image
from emodetect.inference.video import VIDEO_EXTENSIONS, Tracker, analyze_video, video_info
from emodetect.labels import CLASSES

COLUMNS = ("file", "frame", "time_s", "face", "track", "x", "y", "w", "h", "face_score", "label", "confidence",
           *CLASSES, "error")  # fmt: skip
OUTPUT_FORMATS = (".csv", ".jsonl", ".json")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (recursive: their images and videos) and glob patterns -> the files, in a stable order.

    A path that does not exist, a pattern that matches nothing or a folder with no image or video is an
    error naming it."""
    out: list[Path] = []
    for item in inputs:
        if not item.strip():  # Path("") is the current folder: never analyse it by accident
            raise EmodetectError("an input is an empty string (an unset shell variable?)")
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
                           and f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))  # fmt: skip
            if not found:
                raise EmodetectError(f"no images or videos in folder {p}")
            out += found
        elif p.exists():
            out.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                raise EmodetectError(f"no file matches {item!r}")
            out += found
        else:
            raise EmodetectError(f"not found: {item}")
    return list(dict.fromkeys(out))


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def face_row(file: str, face: Face | None, index: int | None, frame: int | None = None, time_s: float | None = None,
             label: str | None = None, error: str = "") -> dict:  # fmt: skip
    """One output row (COLUMNS); no face: label no_face or error."""
    row = dict.fromkeys(COLUMNS, "")
    row.update(file=file, error=error)
    if frame is not None:
        row.update(frame=frame, time_s=round(time_s, 3))
    if face is None:
        row["label"] = label
        return row
    x, y, w, h = face.box
    row.update(face=index, track="" if face.track is None else face.track, x=round(x, 1), y=round(y, 1),
               w=round(w, 1), h=round(h, 1), face_score=round(face.score, 4), label=face.label,
               confidence=round(face.confidence, 4), **{c: round(face.probabilities[c], 5) for c in CLASSES})  # fmt: skip
    return row


@dataclass
class FileResult:
    """What one input gave: rows, and for JSON the nested form."""

    file: str
    kind: str  # "image" or "video"
    rows: list[dict] = field(default_factory=list)
    nested: dict = field(default_factory=dict)
    error: str = ""
    warning: str = ""  # a video read only in part (FramesLost): its rows stand, the message says what is missing


def _image_results(paths: list[Path], analyzer: Analyzer, chunk: int = 16) -> Iterator[tuple]:
    """(path, RGB or None, FileResult, faces) per image; images are read and analysed in chunks, so that the
    faces of many images are classified in one batch."""
    for start in range(0, len(paths), chunk):
        batch = paths[start : start + chunk]
        images, detections, errors = [], [], []
        for p in batch:
            try:
                rgb = load_image(p)
                images.append(rgb)
                detections.append(analyzer.detect(rgb))
                errors.append("")
            except UnreadableImage as exc:
                images.append(None)
                detections.append([])
                errors.append(str(exc))
        faces = analyzer.classify([im for im in images if im is not None],
                                  [d for im, d in zip(images, detections) if im is not None])  # fmt: skip
        k = 0
        for p, rgb, err in zip(batch, images, errors):
            res = FileResult(str(p), "image", error=err)
            if rgb is None:
                res.rows = [face_row(str(p), None, None, label="error", error=err)]
                res.nested = {"file": str(p), "error": err, "faces": []}
            else:
                found = faces[k]
                k += 1
                res.rows = [face_row(str(p), f, i) for i, f in enumerate(found)] or \
                    [face_row(str(p), None, None, label="no_face")]  # fmt: skip
                res.nested = {"file": str(p), "width": rgb.shape[1], "height": rgb.shape[0],
                              "faces": [{"face": i, **f.to_dict()} for i, f in enumerate(found)]}  # fmt: skip
            yield p, rgb, res, (faces[k - 1] if rgb is not None else [])


@dataclass
class PredictSummary:
    n_inputs: int = 0
    n_read: int = 0
    n_faces: int = 0
    n_errors: int = 0
    n_lost_frames: int = 0  # videos read only in part (a damaged file): see their warning
    outputs: list[str] = field(default_factory=list)


def predict_paths(inputs: list[str], *, analyzer: Analyzer, out: Path | None = None, annotate: Path | None = None,
                  timeline: Path | None = None, fps: float | None = None, smooth_s: float = 0.5, detect_every: int = 1,
                  progress: bool = True, echo=print) -> PredictSummary:  # fmt: skip
    """Analyse every input and write the results; returns counts. Rows go to `out` (.csv, .jsonl, .json) or,
    without it, to the terminal as a table."""
    if out is not None and out.suffix.lower() not in OUTPUT_FORMATS:
        raise EmodetectError(f"--out must end in {', '.join(OUTPUT_FORMATS)}, got {out.name}")
    paths = expand_inputs(inputs)
    summary = PredictSummary(n_inputs=len(paths))
    videos = [p for p in paths if is_video(p)]
    images = [p for p in paths if not is_video(p)]
    if annotate is not None and images and annotate.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS:
        raise EmodetectError(f"--annotate for photos is a folder, got {annotate.name}; give an .mp4 path only "
                             "when the one input is a video")  # fmt: skip
    if annotate is not None and len(videos) > 1 and annotate.suffix.lower() in VIDEO_EXTENSIONS:
        raise EmodetectError(f"--annotate for {len(videos)} videos is a folder, got {annotate.name}")
    results: list[FileResult] = []
    names = UniqueNames()
    bar = tqdm(total=len(images), desc="photos", unit="img", disable=True if not progress or len(images) < 2 else None,
               leave=False)  # None: tqdm's own choice, off where stderr is not a terminal
    for p, rgb, res, faces in _image_results(images, analyzer):
        results.append(res)
        if rgb is not None and annotate is not None:
            from emodetect.inference.annotate import draw_faces, save_image

            try:  # one copy that cannot be written costs that copy, not the run's results
                save_image(draw_faces(rgb, faces), names(annotate / f"{p.stem}-annotated.jpg"))
            except EmodetectError as exc:
                stderr_echo(f"warning: no annotated copy of {printable(p)}: {printable(exc)}")
        bar.update(1)
    bar.close()
    for v in videos:
        results.append(_video_result(v, analyzer, fps, smooth_s, detect_every, annotate, timeline, len(videos), progress,
                                     names))  # fmt: skip
    for res in results:
        summary.n_read += not res.error
        summary.n_errors += bool(res.error)
        summary.n_lost_frames += bool(res.warning)
        summary.n_faces += sum(1 for r in res.rows if r["face"] != "")
    if out is None:
        echo(format_table([r for res in results for r in res.rows]))
    else:
        write_results(out, results)
        summary.outputs.append(str(out))
    return summary


class UniqueNames:
    """Output paths for one run: a name already given gets -2, -3, ... (inputs a/x.jpg and b/x.jpg both annotate)."""

    def __init__(self):
        self.used: set[Path] = set()

    def __call__(self, path: Path) -> Path:
        candidate, k = path, 1
        while candidate in self.used:
            k += 1
            candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        self.used.add(candidate)
        return candidate


def _video_result(path: Path, analyzer: Analyzer, fps, smooth_s, detect_every, annotate, timeline, n_videos,
                  progress, names: UniqueNames) -> FileResult:  # fmt: skip
    res = FileResult(str(path), "video")
    try:
        info = video_info(path)
    except EmodetectError as exc:
        res.error = str(exc)
        res.rows = [face_row(str(path), None, None, label="error", error=res.error)]
        res.nested = {"file": str(path), "error": res.error, "frames": []}
        return res
    writer = None
    if annotate is not None:
        from emodetect.inference.annotate import VideoAnnotator

        target = annotate if annotate.suffix.lower() in VIDEO_EXTENSIONS and n_videos == 1 else \
            names(annotate / f"{path.stem}-annotated.mp4")  # fmt: skip
        rate = min(fps, info["fps"]) if fps and info["fps"] else fps or info["fps"] or 25.0  # never above the video's
        writer = VideoAnnotator(target, rate)  # own: frames() yields each frame once, so a copy plays at true speed
    tracker = Tracker(smooth_s)
    total = info["frames"] if not fps or not info["fps"] else int(info["frames"] * min(1.0, fps / info["fps"]))
    bar = tqdm(total=total or None, desc=path.name, unit="frame", disable=not progress or None, leave=False)
    frames_out, failed = [], None
    with warnings.catch_warnings(record=True) as caught:  # a damaged file's lost frames: said below
        warnings.simplefilter("always", FramesLost)
        try:
            for frame in analyze_video(path, analyzer, fps=fps, smooth_s=smooth_s, detect_every=detect_every,
                                       keep_images=writer is not None, tracker=tracker):  # fmt: skip
                res.rows += [face_row(str(path), f, i, frame.index, frame.time_s) for i, f in enumerate(frame.faces)]
                frames_out.append({"frame": frame.index, "time_s": round(frame.time_s, 3),
                                   "faces": [{"face": i, **f.to_dict()} for i, f in enumerate(frame.faces)]})  # fmt: skip
                if writer is not None:
                    writer.write(frame)
                bar.update(1)
        except EmodetectError as exc:  # a video that fails part-way keeps its frames so far, and the run goes on
            n = len(frames_out)
            failed = f"stopped after {n} analysed frame{'s' * (n != 1)}: {exc}"
        finally:
            bar.close()
            if writer is not None:
                writer.close()
    for w in caught:  # frames() warns at most once; anything else raised meanwhile goes on to the caller's filters
        if issubclass(w.category, FramesLost):
            res.warning = str(w.message)
            stderr_echo(f"warning: {printable(res.warning)}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    tracks = tracker.summaries()
    res.nested = {"file": str(path), "fps": info["fps"], "width": info["width"], "height": info["height"],
                  "frames": frames_out, "tracks": tracks}  # fmt: skip
    if res.warning:
        res.nested["warning"] = res.warning
    if failed:
        res.error = res.nested["error"] = failed
        res.rows.append(face_row(str(path), None, None, label="error", error=failed))
    elif not frames_out:
        res.error = res.nested["error"] = "no frame could be decoded"
        res.rows = [face_row(str(path), None, None, label="error", error=res.error)]
    elif not res.rows:
        res.rows = [face_row(str(path), None, None, label="no_face")]
    if timeline is not None and tracks:
        from emodetect import plots

        fig = plots.timeline({t.id: t.history for t in sorted(tracker.finished + list(tracker.tracks.values()),
                                                              key=lambda t: t.id)}, CLASSES, title=path.name)  # fmt: skip
        target = timeline if timeline.suffix.lower() == ".png" and n_videos == 1 else \
            names(timeline / f"{path.stem}-timeline.png")  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        plots.save(fig, target)
    return res


def write_results(out: Path, results: list[FileResult]) -> None:
    suffix = out.suffix.lower()
    if suffix == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for res in results:
            w.writerows(res.rows)
        atomic_write(out, buf.getvalue())
    elif suffix == ".jsonl":
        atomic_write(out, "".join(json.dumps(row) + "\n" for res in results for row in res.rows))
    else:
        atomic_write(out, json.dumps({"columns": list(COLUMNS), "files": [res.nested for res in results]}, indent=1))


def format_table(rows: list[dict]) -> str:
    """A readable table: one line per face, the top emotions with their probabilities."""
    if not rows:
        return "no results"
    width = min(max(len(printable(os.path.basename(str(r["file"])))) for r in rows), 40)
    lines = [f"{'file':<{width}}  {'frame':>6} {'time':>7}  {'face':>4} {'track':>5}  {'box (x, y, w, h)':<22}  "
             f"{'emotion':<10} {'conf':>5}  top-3"]  # fmt: skip
    for r in rows:
        name = printable(os.path.basename(str(r["file"])))[-width:]
        when = (f"{r['frame']:>6} {r['time_s']:>6.2f}s" if r["frame"] != "" else f"{'':>6} {'':>7}")
        if r["face"] == "":
            detail = printable(r["error"]) if r["label"] == "error" else ""
            lines.append(f"{name:<{width}}  {when}  {'':>4} {'':>5}  {'':<22}  {r['label']:<10} {'':>5}  {detail}")
            continue
        box = f"{r['x']:.0f}, {r['y']:.0f}, {r['w']:.0f}, {r['h']:.0f}"
        top = sorted(CLASSES, key=lambda c: -r[c])[:3]
        lines.append(f"{name:<{width}}  {when}  {r['face']:>4} {str(r['track']):>5}  {box:<22}  {r['label']:<10} "
                     f"{r['confidence']:>5.2f}  " + ", ".join(f"{c} {r[c]:.2f}" for c in top))  # fmt: skip
    return "\n".join(lines)


def stderr_echo(message: str) -> None:
    print(message, file=sys.stderr)
