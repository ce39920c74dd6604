"""Videos: frames at their container timestamps, stable track ids, smoothing, summaries, annotation."""

import json
import warnings

import cv2
import numpy as np
import pytest

from emodetect.cli import main
from emodetect.errors import EmodetectError, FramesLost
from emodetect.inference.analyze import Analyzer
from emodetect.inference.video import Tracker, analyze_video, frames
from emodetect.labels import CLASSES

FPS = 10
N_FRAMES = 30


@pytest.fixture(scope="module")
def two_face_video(tmp_path_factory, real_faces):
    """Two real faces (enlarged crops) sliding across a 640x360 scene in opposite directions, 3 s at 10 fps."""
    faces = [cv2.resize(f, (150, 150), interpolation=cv2.INTER_CUBIC) for f in real_faces[0][:2]]
    path = tmp_path_factory.mktemp("video") / "two.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 360))
    for i in range(N_FRAMES):
        frame = np.full((360, 640, 3), 70, np.uint8)
        frame[100:250, 20 + 4 * i : 170 + 4 * i] = faces[0]
        frame[100:250, 470 - 4 * i : 620 - 4 * i] = faces[1]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_frames_come_with_their_timestamps_and_fps_samples_them(two_face_video):
    every = list(frames(two_face_video))
    assert len(every) == N_FRAMES and [f[0] for f in every] == list(range(N_FRAMES))
    np.testing.assert_allclose([f[1] for f in every], np.arange(N_FRAMES) / FPS, atol=1e-3)
    half = list(frames(two_face_video, fps=5))
    assert [f[0] for f in half] == list(range(0, N_FRAMES, 2))


@pytest.mark.real_data
def test_two_moving_faces_keep_two_track_ids_and_smoothing_stays_between_raw_values(two_face_video):
    tracker = Tracker(smooth_s=0.5)
    out = list(analyze_video(two_face_video, Analyzer(), tracker=tracker))
    assert len(out) == N_FRAMES
    left_ids = {min(fr.faces, key=lambda f: f.box[0]).track for fr in out if len(fr.faces) == 2}
    right_ids = {max(fr.faces, key=lambda f: f.box[0]).track for fr in out if len(fr.faces) == 2}
    assert sum(len(fr.faces) == 2 for fr in out) >= N_FRAMES - 2
    assert len(left_ids) == 1 and len(right_ids) == 1 and left_ids != right_ids  # each face keeps its id
    for tid in left_ids | right_ids:
        raw = np.array([[f.probabilities[c] for c in CLASSES] for fr in out for f in fr.faces if f.track == tid])
        smooth = np.array([[f.extra["smoothed"][c] for c in CLASSES] for fr in out for f in fr.faces if f.track == tid])
        assert (smooth >= raw.min(0) - 1e-4).all() and (smooth <= raw.max(0) + 1e-4).all()
        np.testing.assert_allclose(smooth.sum(1), 1, atol=1e-3)
        assert smooth.std(0).sum() <= raw.std(0).sum() + 1e-6  # smoothing smooths
    summary = {s["track"]: s for s in tracker.summaries()}
    assert set(summary) >= left_ids | right_ids
    for tid in left_ids | right_ids:
        assert summary[tid]["seconds"] >= 2.5 and abs(sum(summary[tid]["share"].values()) - 1) < 1e-3


@pytest.mark.real_data
def test_predict_on_a_video_writes_rows_tracks_an_annotated_video_and_a_timeline(two_face_video, tmp_path):
    argv = ["predict", str(two_face_video), "--out", str(tmp_path / "v.json"), "--fps", "5",
            "--annotate", str(tmp_path / "ann.mp4"), "--timeline", str(tmp_path / "t.png")]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((tmp_path / "v.json").read_text())["files"][0]
    assert len(doc["frames"]) == 15 and len(doc["tracks"]) >= 2
    assert doc["frames"][3]["time_s"] == pytest.approx(0.6, abs=1e-3)
    face = doc["frames"][3]["faces"][0]
    assert {"track", "smoothed", "smoothed_label", "probabilities"} <= set(face)
    cap = cv2.VideoCapture(str(tmp_path / "ann.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 15
    cap.release()
    assert (tmp_path / "t.png").stat().st_size > 5000
    assert main(["predict", str(two_face_video), "--fps", "5", "--out", str(tmp_path / "v.csv")]) == 0
    rows = (tmp_path / "v.csv").read_text().splitlines()
    assert rows[0].startswith("file,frame,time_s,face,track") and len(rows) >= 1 + 2 * 14


def test_a_video_over_the_pixel_limit_is_refused_before_decoding(two_face_video, monkeypatch):
    monkeypatch.setenv("EMODETECT_MAX_PIXELS", str(640 * 360 - 1))
    with pytest.raises(EmodetectError, match="over the limit"):
        next(frames(two_face_video))


def test_a_track_closed_by_a_later_frame_of_the_same_batch_is_still_smoothed():
    # frames 2 s apart (--fps 0.5, or a face gone for over a second): assigning the second frame closes the first
    # frame's track before the batch is smoothed; that once raised KeyError and lost the whole run
    from emodetect.inference.analyze import Face
    from emodetect.inference.faces import Detection
    from emodetect.inference.video import _flush

    class Stub:  # classifies every face as happy, without a model
        def classify(self, images, detections):
            p = {c: float(c == "happy") for c in CLASSES}
            return [[Face(d.box, d.score, None, dict(p), "happy", 1.0) for d in dets] for dets in detections]

    img, det = np.zeros((64, 64, 3), np.uint8), Detection((10.0, 10.0, 30.0, 30.0), 0.99)
    tracker = Tracker(max_gap_s=1.0)
    out = list(_flush([(0, 0.0, img, [det]), (50, 2.0, img, [det])], Stub(), tracker, False))
    assert [fr.faces[0].track for fr in out] == [1, 2]  # a new track after the gap
    assert all(fr.faces[0].extra["smoothed_label"] == "happy" for fr in out)
    assert [s["track"] for s in tracker.summaries()] == [1, 2] and tracker.finished[0].n_frames == 1


class _StubAnalyzer:
    """One fixed face per frame, always happy: the video plumbing without a model."""

    def detect(self, rgb):
        from emodetect.inference.faces import Detection

        return [Detection((100.0, 100.0, 150.0, 150.0), 0.99)]

    def classify(self, images, detections):
        from emodetect.inference.analyze import Face

        p = {c: float(c == "happy") for c in CLASSES}
        return [[Face(d.box, d.score, None, dict(p), "happy", 1.0) for d in dets] for dets in detections]


def test_an_annotated_copy_plays_at_the_video_s_own_rate_when_more_fps_are_asked(two_face_video, tmp_path):
    from emodetect.inference.predict import predict_paths

    predict_paths([str(two_face_video)], analyzer=_StubAnalyzer(), out=tmp_path / "v.json", fps=60,
                  annotate=tmp_path / "ann.mp4", progress=False)  # fmt: skip
    cap = cv2.VideoCapture(str(tmp_path / "ann.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS) and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    cap.release()


def test_a_video_that_fails_part_way_keeps_its_frames_and_the_run_goes_on(two_face_video, tmp_path, monkeypatch):
    from emodetect.inference import annotate
    from emodetect.inference.predict import predict_paths

    written = []

    def write(self, frame):  # the disk fills up at the fourth frame
        if len(written) == 3:
            raise EmodetectError(f"cannot write video {self.path}")
        written.append(frame.index)

    monkeypatch.setattr(annotate.VideoAnnotator, "write", write)
    second = tmp_path / "second.mp4"
    second.write_bytes(two_face_video.read_bytes())
    summary = predict_paths([str(two_face_video), str(second)], analyzer=_StubAnalyzer(),
                            out=tmp_path / "v.json", annotate=tmp_path / "ann", progress=False)  # fmt: skip
    files = json.loads((tmp_path / "v.json").read_text())["files"]
    assert summary.n_errors == 2 and len(files) == 2  # both videos reported, neither lost the run
    # the fourth frame was analysed before its copy failed: its faces are kept
    assert len(files[0]["frames"]) == 4 and files[0]["error"].startswith("stopped after 4 analysed frames: cannot write")
    assert files[1]["error"].startswith("stopped after 1 analysed frame: ")


def test_annotate_paths_that_would_become_odd_folders_are_refused(two_face_video, tmp_path):
    from emodetect.inference.predict import predict_paths

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    second = tmp_path / "second.mp4"
    second.write_bytes(two_face_video.read_bytes())
    for inputs, target, message in [([photo], "out.jpg", "for photos is a folder, got out.jpg"),
                                    ([two_face_video, second], "out.mp4", "for 2 videos is a folder, got out.mp4")]:  # fmt: skip
        with pytest.raises(EmodetectError, match=message):
            predict_paths([str(p) for p in inputs], analyzer=_StubAnalyzer(), annotate=tmp_path / target, progress=False)
    assert not (tmp_path / "out.jpg").exists() and not (tmp_path / "out.mp4").exists()


def test_an_annotated_video_under_a_file_is_one_error_row(two_face_video, tmp_path):
    from emodetect.inference.predict import predict_paths

    (tmp_path / "taken").write_text("a file, not a folder")
    summary = predict_paths([str(two_face_video)], analyzer=_StubAnalyzer(), out=tmp_path / "v.json",
                            annotate=tmp_path / "taken" / "ann.mp4", progress=False)  # fmt: skip
    doc = json.loads((tmp_path / "v.json").read_text())["files"][0]
    assert summary.n_errors == 1 and doc["error"].startswith("stopped after 1 analysed frame: cannot write video")


@pytest.fixture()
def damaged_video(tmp_path):
    """A 3 s clip with the middle fifth of its bytes zeroed: the decoder gives up part-way through."""
    path = tmp_path / "damaged.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (160, 120))
    for i in range(N_FRAMES):
        frame = np.full((120, 160, 3), 8 * i, np.uint8)
        cv2.circle(frame, (20 + 4 * i, 60), 15, (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    data = bytearray(path.read_bytes())
    lo, hi = int(len(data) * 0.4), int(len(data) * 0.6)
    data[lo:hi] = bytes(hi - lo)
    path.write_bytes(data)
    return path


def test_frames_lost_to_damage_are_counted_and_warned_about_and_a_whole_video_is_not(two_face_video, damaged_video):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the intact video: no warning at all
        assert len(list(frames(two_face_video))) == N_FRAMES
    with pytest.warns(FramesLost) as caught:
        read = list(frames(damaged_video))
    assert 0 < len(read) < N_FRAMES and [f[0] for f in read] == list(range(len(read)))
    assert f"decoded {len(read)} of the {N_FRAMES} frames" in str(caught[0].message)


def test_predict_says_a_video_lost_frames_and_keeps_the_ones_it_read(damaged_video, tmp_path, capsys):
    from emodetect.inference.predict import predict_paths

    summary = predict_paths([str(damaged_video)], analyzer=_StubAnalyzer(), out=tmp_path / "v.json", progress=False)
    file = json.loads((tmp_path / "v.json").read_text())["files"][0]
    n = len(file["frames"])
    assert summary.n_errors == 0 and summary.n_lost_frames == 1 and 0 < n < N_FRAMES and "error" not in file
    assert file["warning"].endswith(f"decoded {n} of the {N_FRAMES} frames its container declares; the rest could "
                                    "not be decoded (a damaged or cut-short file)")  # fmt: skip
    assert capsys.readouterr().err.strip() == f"warning: {file['warning']}"
