"""Photos -> faces -> emotions, and `emodetect predict`: real faces pasted into larger photos at test time."""

import csv
import json

import cv2
import numpy as np
import pytest

import emodetect
from emodetect.cli import main
from emodetect.inference.analyze import Analyzer
from emodetect.inference.predict import COLUMNS, expand_inputs
from emodetect.labels import CLASSES

pytestmark = pytest.mark.real_data


def _scene(face: np.ndarray, rng, scale: float, angle: float = 0.0):
    """A face crop enlarged, maybe tilted, pasted at a random place on a blurred-noise background; its box."""
    big = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    if angle:
        m = cv2.getRotationMatrix2D((big.shape[1] / 2, big.shape[0] / 2), angle, 1.0)
        big = cv2.warpAffine(big, m, big.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    h, w = big.shape[0] + 240, big.shape[1] + 360
    canvas = cv2.GaussianBlur(np.clip(rng.normal(120, 40, (h, w, 3)), 0, 255).astype(np.uint8), (0, 0), 8)
    y, x = int(rng.integers(0, h - big.shape[0])), int(rng.integers(0, w - big.shape[1]))
    canvas[y : y + big.shape[0], x : x + big.shape[1]] = big
    return canvas, (x, y, big.shape[1], big.shape[0])


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw, ih = max(0, min(ax + aw, bx + bw) - max(ax, bx)), max(0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih / (aw * ah + bw * bh - iw * ih)


def test_faces_pasted_into_photos_are_found_and_classified_as_the_crop_itself(real_faces):
    faces, _ = real_faces
    rng = np.random.default_rng(0)
    analyzer = Analyzer()
    direct = analyzer.predictor.predict_proba(faces)
    found, agree = 0, 0
    for k, face in enumerate(faces[:24]):
        scene, where = _scene(face, rng, scale=float(rng.uniform(1.5, 3.0)), angle=float(rng.uniform(-10, 10)) * (k % 2))
        result = analyzer.analyze(scene)
        if result and _iou(result[0].box, where) >= 0.3:  # the detector's box is tighter than the crop around it
            found += 1
            agree += result[0].label == CLASSES[int(direct[k].argmax())]
    assert found >= 22
    assert agree / found >= 0.6  # "nearly the same prediction": framing and resampling differ a little


def test_analyze_takes_paths_pil_images_and_arrays(real_faces, tmp_path):
    from PIL import Image

    scene, _ = _scene(real_faces[0][0], np.random.default_rng(1), 2.5)
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    a = emodetect.analyze(str(path))
    b = emodetect.analyze(Image.fromarray(scene))
    c = emodetect.analyze(scene)
    assert len(a) == len(b) == len(c) == 1
    f = a[0]
    assert set(f.probabilities) == set(CLASSES) and abs(sum(f.probabilities.values()) - 1) < 1e-4
    assert f.label in CLASSES and f.landmarks.shape == (5, 2) and 0 < f.score <= 1
    assert a[0].probabilities == pytest.approx(c[0].probabilities, abs=1e-3)
    assert emodetect.analyze(np.full((300, 400, 3), 90, np.uint8)) == []  # no face: an empty list, no error


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, real_faces):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(2)
    for k in range(3):
        scene, _ = _scene(real_faces[0][k], rng, 2.2)
        cv2.imwrite(str(root / f"face{k}.jpg"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "sub" / "empty.png"), np.full((200, 300, 3), 128, np.uint8))
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "notes.txt").write_text("ignored")
    return root


def test_predict_writes_the_documented_csv_and_json(photo_folder, tmp_path, capsys):
    assert main(["predict", str(photo_folder), "--out", str(tmp_path / "out.csv"), "--min-confidence", "0.99"]) == 0
    with open(tmp_path / "out.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    by_file = {r["file"].split("/")[-1]: r for r in rows}
    assert by_file["empty.png"]["label"] == "no_face" and by_file["broken.jpg"]["label"] == "error"
    assert "truncated" in by_file["broken.jpg"]["error"]
    faces = [r for r in rows if r["face"] != ""]
    assert len(faces) == 3
    for r in faces:
        p = np.array([float(r[c]) for c in CLASSES])
        assert abs(p.sum() - 1) < 1e-3 and r["label"] in (*CLASSES, "uncertain")
        assert r["label"] == "uncertain" or float(r["confidence"]) >= 0.99  # --min-confidence, probabilities kept
    assert main(["predict", str(photo_folder / "face0.jpg"), "--out", str(tmp_path / "out.json")]) == 0
    doc = json.loads((tmp_path / "out.json").read_text())
    face = doc["files"][0]["faces"][0]
    assert {"box", "score", "landmarks", "probabilities", "label", "confidence"} <= set(face)
    assert main(["predict", str(photo_folder), "--out", str(tmp_path / "out.jsonl")]) == 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 5 and set(json.loads(lines[0])) == set(COLUMNS)
    assert main(["predict", str(photo_folder / "face1.jpg")]) == 0  # a table on the terminal
    out = capsys.readouterr().out
    assert "face1.jpg" in out and "emotion" in out


def test_predict_annotates_photos(photo_folder, tmp_path):
    assert main(["predict", str(photo_folder / "face0.jpg"), "--annotate", str(tmp_path / "ann")]) == 0
    drawn = cv2.imread(str(tmp_path / "ann" / "face0-annotated.jpg"))
    original = cv2.imread(str(photo_folder / "face0.jpg"))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).max() > 100


def test_annotated_copies_never_overwrite_each_other(photo_folder, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):  # the same file name in two folders
        (tmp_path / d / "x.jpg").write_bytes((photo_folder / f"face{'ab'.index(d)}.jpg").read_bytes())
    assert main(["predict", str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg"), "--annotate",
                 str(tmp_path / "ann"), "--out", str(tmp_path / "out.csv")]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["x-annotated-2.jpg", "x-annotated.jpg"]


@pytest.mark.parametrize("args, message", [
    ([""], "empty string"),
    (["{tmp}/missing.jpg"], "not found"),
    (["{tmp}/empty_folder"], "no images or videos"),
    (["{tmp}/*.nothing"], "no file matches"),
    (["{tmp}/bad.mp4"], "no input could be read"),
    (["{tmp}/only_broken"], "no input could be read"),
    (["{photos}/face0.jpg", "--out", "{tmp}/out.xml"], "--out must end in"),
    (["{photos}/face0.jpg", "--fps", "0"], "--fps"),
])  # fmt: skip
def test_predict_bad_input_is_one_line_and_a_non_zero_exit(photo_folder, tmp_path, capsys, args, message):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    (tmp_path / "only_broken").mkdir()
    (tmp_path / "only_broken" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    argv = ["predict"] + [a.format(tmp=tmp_path, photos=photo_folder) for a in args]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("emodetect")]
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_inputs_expand_folders_recursively_and_globs(photo_folder):
    files = expand_inputs([str(photo_folder)])
    assert {f.name for f in files} == {"face0.jpg", "face1.jpg", "face2.jpg", "empty.png", "broken.jpg"}
    assert [f.name for f in expand_inputs([str(photo_folder / "face*.jpg")])] == ["face0.jpg", "face1.jpg", "face2.jpg"]
