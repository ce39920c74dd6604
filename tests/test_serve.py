"""The HTTP API (`emodetect serve`) through FastAPI's TestClient, on real faces built from ../shared at test time:
results in `predict`'s schema, every refusal (413, 415, 422, 401, 503, 500) as one JSON line that leaks nothing,
the page's offline rules, the serve package's imports, and a bounded schemathesis fuzz run with no 5xx."""

from __future__ import annotations

import ast
import json
import re
import threading
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx2", reason="TestClient needs httpx2")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import FACES_ZIP, REAL_ZIP  # noqa: E402
from emodetect.errors import EmodetectError  # noqa: E402
from emodetect.serve import app as serve_app  # noqa: E402
from emodetect.serve.app import create_app  # noqa: E402

SERVE_DIR = Path(serve_app.__file__).parent
HAPPY_CROP = "happy/ffhq_1.png"  # a 96x96 crop both shipped models call happy (0.84 and 0.82 in this photo)
COUPLE = "images/19--Couple/19_Couple_Couple_19_86.jpg"  # WIDER FACE: two large faces
TOKEN = "s3cret-token"


def single_face_photo() -> bytes:
    """A 640x480 JPEG with one face: an AffectNet crop, enlarged, on a plain gradient."""
    if not REAL_ZIP.exists():
        pytest.skip(f"shared AffectNet zip not found at {REAL_ZIP}")
    with zipfile.ZipFile(REAL_ZIP) as z:
        crop = cv2.imdecode(np.frombuffer(z.read(HAPPY_CROP), np.uint8), cv2.IMREAD_COLOR)
    photo = np.empty((480, 640, 3), np.uint8)
    photo[:] = np.linspace(70, 190, 640, dtype=np.float32)[None, :, None].astype(np.uint8)
    photo[120:312, 224:416] = cv2.resize(crop, (192, 192), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny, complete PNG whose header declares width x height pixels (its data holds far fewer)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def photo() -> bytes:
    return single_face_photo()


@pytest.fixture(scope="module")
def couple() -> bytes:
    if not FACES_ZIP.exists():
        pytest.skip(f"shared faces zip not found at {FACES_ZIP}")
    with zipfile.ZipFile(FACES_ZIP) as z:
        return z.read(COUPLE)


@pytest.fixture(scope="module")
def app():
    return create_app("default", "mtcnn", workers=1, queue=1)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def locked_client():
    """An app with a token, one CORS origin, a 200 kB upload limit and two workers."""
    app = create_app(token=TOKEN, cors="https://example.org", max_upload_bytes=200_000, workers=2)
    with TestClient(app) as c:
        yield c


def error_of(response) -> str:
    """The one-line error of a refused request (and check its shape)."""
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"]
    return body["error"]


# --------------------------------------------------------------------------------------------- results


def test_analyze_matches_the_library_and_predicts_schema(client, photo):
    from emodetect.inference.analyze import analyze

    r = client.post("/v1/analyze", files={"file": ("face.jpg", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (640, 480)
    faces = body["faces"]
    assert len(faces) == 1
    expected = [{"face": i, **f.to_dict()} for i, f in enumerate(analyze(photo))]  # what `predict --out x.json` holds
    assert faces == json.loads(json.dumps(expected))
    face = faces[0]
    assert face["label"] == "happy" and face["confidence"] > 0.5
    assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    x, y, w, h = face["box"]
    assert 180 < x + w / 2 < 460 and 100 < y + h / 2 < 330  # on the pasted face
    assert len(face["landmarks"]) == 5


def test_raw_body_equals_multipart(client, photo):
    multipart = client.post("/v1/analyze", files={"file": ("face.jpg", photo, "image/jpeg")}).json()
    raw = client.post("/v1/analyze", content=photo, headers={"Content-Type": "image/jpeg"}).json()
    assert raw == multipart


def test_several_faces_and_query_options(client, couple):
    faces = client.post("/v1/analyze", content=couple).json()["faces"]
    assert len(faces) >= 2
    areas = [f["box"][2] * f["box"][3] for f in faces]
    assert areas == sorted(areas, reverse=True)  # largest first, as predict
    assert [f["face"] for f in faces] == list(range(len(faces)))
    one = client.post("/v1/analyze?max_faces=1", content=couple).json()["faces"]
    assert one == faces[:1]
    strict = client.post("/v1/analyze?min_confidence=0.999", content=couple).json()["faces"]
    assert {f["label"] for f in strict} == {"uncertain"}
    assert [f["probabilities"] for f in strict] == [f["probabilities"] for f in faces]  # probabilities are kept
    again = client.post("/v1/analyze", content=couple).json()["faces"]
    assert again == faces  # options never stick to the worker's analyzer


def test_no_face_is_an_empty_list(client):
    blank = cv2.imencode(".png", np.full((200, 300, 3), 128, np.uint8))[1].tobytes()
    r = client.post("/v1/analyze", content=blank)
    assert r.status_code == 200 and r.json() == {"width": 300, "height": 200, "faces": []}


def test_health_and_model(client):
    from emodetect.models.artifact import resolve_artifact

    health = client.get("/v1/health").json()
    assert health == {"status": "ok", "workers": 1, "queue": 1, "in_flight": 0, "max_upload_bytes": 10_000_000}
    model = client.get("/v1/model").json()
    assert model["name"] == "default" and model["classes"] == ["anger", "contempt", "disgust", "fear", "happy",
                                                               "neutral", "sad", "surprise"]  # fmt: skip
    pre = resolve_artifact("default").meta["preprocess"]
    assert (model["input_size"], model["color_mode"]) == (pre["size"], pre["mode"])
    assert 0 < model["test_accuracy"] < 1 and 0 < model["test_macro_f1"] < 1
    assert model["temperature"] > 0 and model["detector"] == "mtcnn" and model["backend"] == "onnx"
    text = json.dumps(model)
    assert "/" not in text and "version" not in text and "fingerprint" not in text


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/analyze", "/v1/health", "/v1/model"} <= set(spec["paths"])
    body = spec["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/jpeg" in body
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------------- refusals


def test_not_an_image_is_415(client):
    r = client.post("/v1/analyze", files={"file": ("notes.txt", b"hello, not a photo", "text/plain")})
    assert r.status_code == 415 and "not an image" in error_of(r)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty upload"),
    (png_header_bomb(100_000, 100_000), "pixels"),  # refused from the header: nothing is decoded
    (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "truncated JPEG"),
    (b"GIF89a" + b"\x01" * 30, "cannot be decoded"),
], ids=["empty", "bomb", "truncated", "corrupt"])  # fmt: skip
def test_unreadable_images_are_422(client, data, reason):
    r = client.post("/v1/analyze", content=data)
    assert r.status_code == 422 and reason in error_of(r)


def test_pixel_limit_is_configurable(client, photo, monkeypatch):
    monkeypatch.setenv("EMODETECT_MAX_PIXELS", "100000")
    r = client.post("/v1/analyze", content=photo)
    assert r.status_code == 422 and "640x480 = 307,200 pixels, over the limit of 100,000" in error_of(r)


def test_uploads_over_the_limit_are_413(client, locked_client, photo):
    big = photo + b"\x00" * (10_000_001 - len(photo))
    assert client.post("/v1/analyze", content=big).status_code == 413
    r = client.post("/v1/analyze", files={"file": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "10,000,000 bytes" in error_of(r)

    def chunks():  # chunked transfer: no Content-Length to trust, the cap holds while streaming
        for _ in range(40):
            yield b"\xff" * 8192

    r = locked_client.post("/v1/analyze", content=chunks(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 413 and "200,000 bytes" in error_of(r)
    ok = locked_client.post("/v1/analyze", content=photo, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200  # under the cap


@pytest.mark.parametrize("query", ["min_confidence=2", "min_confidence=-0.1", "min_confidence=nan", "max_faces=0",
                                   "max_faces=abc", "max_faces=1000"])  # fmt: skip
def test_bad_query_options_are_422(client, photo, query):
    r = client.post(f"/v1/analyze?{query}", content=photo)
    assert r.status_code == 422 and query.split("=")[0] in error_of(r)


def test_multipart_without_file_field(client, photo):
    r = client.post("/v1/analyze", files={"image": ("face.jpg", photo, "image/jpeg")})
    assert r.status_code == 422 and "'file'" in error_of(r)
    broken = {"Content-Type": "multipart/form-data; boundary=x"}
    r = client.post("/v1/analyze", content=b"--x\r\nnot a form", headers=broken)
    assert 400 <= r.status_code < 500
    error_of(r)


def test_unknown_routes_and_methods_are_json(client):
    assert client.get("/nowhere").status_code == 404 and error_of(client.get("/nowhere"))
    r = client.delete("/v1/analyze")
    assert r.status_code == 405 and error_of(r)


def test_busy_server_says_503_with_retry_after(app, client, photo, monkeypatch):
    release = threading.Event()
    started = threading.Event()
    real = serve_app.analyze_image

    def slow(analyzer, *args):
        started.set()
        release.wait(10)
        return real(analyzer, *args)

    monkeypatch.setattr(serve_app, "analyze_image", slow)
    results = []
    first = [threading.Thread(target=lambda: results.append(client.post("/v1/analyze", content=photo)))
             for _ in range(2)]  # fmt: skip
    for t in first:  # one runs on the only worker, one waits in the queue of 1
        t.start()
    assert started.wait(10)
    deadline = time.monotonic() + 10
    while app.state.pool.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.state.pool.in_flight == 2
    refused = client.post("/v1/analyze", content=photo)
    release.set()
    for t in first:
        t.join(20)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1" and "busy" in error_of(refused)
    assert [r.status_code for r in results] == [200, 200]
    assert app.state.pool.in_flight == 0


def test_a_request_cancelled_mid_job_keeps_its_slot_until_the_job_ends():
    # a client that hangs up cancels its request, but the worker thread runs on: its slot must stay taken,
    # or more jobs than workers + queue could pile up behind it
    import asyncio

    from emodetect.serve.app import InferencePool

    pool, release, started = InferencePool([object()], queue_size=0), threading.Event(), threading.Event()

    def job(analyzer):
        started.set()
        release.wait(10)
        return "done"

    async def scenario():
        assert pool.admit() and not pool.admit()  # one worker, no queue: full
        task = asyncio.ensure_future(pool.run(job))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held = pool.in_flight  # the job still runs: still busy
        release.set()
        for _ in range(500):
            if pool.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.admit()  # free again once it ended
        pool.release()
        return held

    try:
        assert asyncio.run(scenario()) == 1 and pool.in_flight == 0
    finally:
        pool.close()


def test_internal_errors_leak_nothing(app, photo, monkeypatch):
    def broken(*args):
        raise RuntimeError('File "/work/main/src/emodetect/x.py", line 3: torch 2.13.0 failed')

    monkeypatch.setattr(serve_app, "analyze_image", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/analyze", content=photo)
    assert r.status_code == 500 and error_of(r) == "internal server error"
    assert app.state.pool.in_flight == 0


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's note on the fake TIFF, printed server-side only
def test_no_error_ever_shows_internals(client, photo):
    import fastapi
    import pydantic
    import starlette
    import torch

    bad = [("post", "/v1/analyze", {"content": b"junk"}), ("post", "/v1/analyze", {"content": b""}),
           ("post", "/v1/analyze", {"content": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40}),
           ("post", "/v1/analyze", {"content": b"GIF89a" + b"\x01" * 30}),
           ("post", "/v1/analyze", {"content": b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 30}),
           ("post", "/v1/analyze", {"content": b"II*\x00" + b"\xff" * 30}), ("post", "/v1/analyze", {"content": b"BM" + b"\x00" * 30}),
           ("post", "/v1/analyze", {"content": png_header_bomb(60_000, 60_000)}),
           ("post", "/v1/analyze", {"content": png_header_bomb(0, 10)}),
           ("post", "/v1/analyze?max_faces=x", {"content": photo}),
           ("post", "/v1/analyze", {"files": {"file": ("a", b"\xff\xd8\xff" + b"\x00" * 99, "image/jpeg")}}),
           ("post", "/v1/analyze", {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}}),
           ("get", "/v1/nothing", {}), ("put", "/v1/model", {}), ("get", "/static/../app.py", {}),
           ("get", "/static/nothing.js", {})]  # fmt: skip
    versions = {v for v in (torch.__version__, np.__version__, fastapi.__version__, starlette.__version__,
                            pydantic.VERSION, cv2.__version__) if v}  # fmt: skip
    for method, url, kwargs in bad:
        r = getattr(client, method)(url, **kwargs)
        assert 400 <= r.status_code < 500, (url, r.status_code, r.text)
        text = error_of(r)
        assert not re.search(r"Traceback|File \"|/work|/usr|site-packages|\.py\b|OpenCV|libpng|PIL", text), text
        assert not any(v in text for v in versions), text
        assert "server" not in r.headers


# ----------------------------------------------------------------------------------------- token, CORS


def test_token_guards_every_v1_call(locked_client, photo):
    for method, url, kwargs in [("get", "/v1/health", {}), ("get", "/v1/model", {}),
                                ("post", "/v1/analyze", {"content": photo})]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):  # fmt: skip
            r = getattr(locked_client, method)(url, headers=headers, **kwargs)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and error_of(r)
        good = getattr(locked_client, method)(url, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
        assert good.status_code == 200
    assert locked_client.get("/").status_code == 200  # the page itself is public; it asks for the token


def test_two_workers_give_the_same_answers_concurrently(locked_client, photo, couple):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert locked_client.get("/v1/health", headers=auth).json()["workers"] == 2
    assert len(couple) < 200_000  # this app's upload limit
    expected = {name: locked_client.post("/v1/analyze", content=data, headers=auth).json()
                for name, data in (("photo", photo), ("couple", couple))}  # fmt: skip
    got = []

    def send(name):
        data = photo if name == "photo" else couple
        got.append((name, locked_client.post("/v1/analyze", content=data, headers=auth).json()))

    threads = [threading.Thread(target=send, args=(name,)) for name in ["photo", "couple"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 6 and all(result == expected[name] for name, result in got)


def test_cors_is_off_unless_given(client, locked_client):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    assert "access-control-allow-origin" not in client.options("/v1/analyze", headers=preflight).headers
    simple = client.get("/v1/health", headers={"Origin": "https://example.org"})
    assert "access-control-allow-origin" not in simple.headers
    r = locked_client.options("/v1/analyze", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "https://example.org"
    other = locked_client.options("/v1/analyze", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_bad_options_fail_in_one_line():
    with pytest.raises(EmodetectError, match="--cors"):
        create_app(cors="example.org/path")
    with pytest.raises(EmodetectError, match="--token"):
        create_app(token="")
    with pytest.raises(EmodetectError, match="--workers"):
        create_app(workers=0)


def test_missing_model_fails_at_start_up():
    from importlib import resources

    if resources.files("emodetect.weights").joinpath("fast.safetensors").is_file():
        pytest.skip("this installation ships a fast model")
    with pytest.raises(EmodetectError, match="fast") as info:
        create_app("fast")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ page


def test_page_is_served_offline(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    for name in ("index.html", "app.js", "style.css"):
        text = (SERVE_DIR / "static" / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{name} names an external URL"
        assert "@import" not in text
        assert client.get(f"/static/{name}").status_code == 200
    html = r.text
    for needed in ('id="file-input"', 'id="cam-toggle"', 'id="token"', 'name="viewport"', 'href="data:,"'):
        assert needed in html


def test_serve_imports_only_inference_side_modules():
    allowed = ("emodetect.inference", "emodetect.models", "emodetect.data", "emodetect.errors", "emodetect.labels",
               "emodetect.serve")  # fmt: skip
    for path in SERVE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []  # fmt: skip
            for name in names:
                if name == "emodetect" or name.startswith("emodetect."):
                    assert name.startswith(allowed), f"{path.name} imports {name}"


# ------------------------------------------------------------------------------------------------ fuzz


# (method, path) -> generated cases per mode; the GETs take no input, so they have no invalid cases: 100 in all
FUZZ_CASES = {("POST", "/v1/analyze"): {"positive": 40, "negative": 40}, ("GET", "/v1/health"): {"positive": 10},
              ("GET", "/v1/model"): {"positive": 10}}  # fmt: skip


def test_fuzz_never_5xx(app):
    """Schemathesis cases from /openapi.json, valid and invalid, for every operation: never a 5xx, every response
    as documented, every refusal one JSON line."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode, n in FUZZ_CASES[(op.method.upper(), op.path)].items():

            @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
            @settings(max_examples=n, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def run(case):
                response = case.call()
                seen.append(response.status_code)
                assert response.status_code < 500, response.text
                case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                         response_schema_conformance])  # fmt: skip
                if response.status_code >= 400:
                    body = response.json()
                    assert list(body) == ["error"] and "\n" not in body["error"]

            run()
    assert 50 <= len(seen) <= 100 and max(seen) < 500
