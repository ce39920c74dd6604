"""A live `emodetect serve` process: the page in a real browser (Debian's Chromium driven by Playwright) and a
graceful shutdown. The server runs in a subprocess on a free port of 127.0.0.1, with a token."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from conftest import FACES_ZIP  # noqa: E402
from emodetect.labels import CLASSES  # noqa: E402
from test_serve import COUPLE, single_face_photo  # noqa: E402

CHROMIUM = Path(os.environ.get("EMODETECT_CHROMIUM", "/usr/bin/chromium"))
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TOKEN = "browser-token"
START_TIMEOUT_S = 180  # the model loads before the port opens (seconds on a busy 2-core machine)
HAPPY = (0xE0, 0x9C, 0x00)  # the page's colour for happy (app.js COLORS)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextmanager
def live_server(log_path: Path, **options):
    """`serve(...)` in a subprocess (what `emodetect serve` runs); yields (base URL, process); stops it with SIGINT."""
    port = free_port()
    cmd = [sys.executable, "-m", "emodetect", "serve", "--port", str(port), "--workers", "1", "--no-access-log"]
    if options.get("token"):
        cmd += ["--token", options["token"]]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if get(f"{url}/v1/health", options.get("token"))[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start in {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("serve") / "server.log", token=TOKEN) as (url, _):
        yield url


@pytest.fixture(scope="module")
def photo() -> bytes:
    return single_face_photo()


@pytest.fixture(scope="module")
def camera_file(tmp_path_factory, photo) -> Path:
    """A Y4M clip of the face photo (drifting a little) for Chromium's fake camera."""
    bgr = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    path = tmp_path_factory.mktemp("camera") / "face.y4m"
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(20):
            shifted = np.roll(bgr, 3 * (i if i < 10 else 20 - i), axis=1)
            f.write(b"FRAME\n" + cv2.cvtColor(shifted, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def browser(camera_file):
    camera = FAKE_CAMERA + [f"--use-file-for-fake-video-capture={camera_file}"]
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROME_ARGS + camera)
        yield b
        b.close()


def open_page(browser, url: str, *, width=1200, height=900, token: str | None = TOKEN, camera: bool = False):
    """A fresh page with its console errors collected in page.errors (the token preset as the page stores it)."""
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    if camera:
        context.grant_permissions(["camera"], origin=url)
    if token:
        context.add_init_script(f"sessionStorage.setItem('emodetect-token', {json.dumps(token)})")
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url + "/")
    return page


def wait_connected(page):
    page.locator("#model-info", has_text="model (").wait_for(timeout=30_000)  # (locators: the page's CSP forbids eval)


def test_photo_gets_boxes_labels_and_bars(server, browser, photo, tmp_path):
    page = open_page(browser, server)
    wait_connected(page)
    page.set_input_files("#file-input", files=[{"name": "face.jpg", "mimeType": "image/jpeg", "buffer": photo}])
    card = page.wait_for_selector(".result[data-faces='1']", timeout=60_000)
    label = card.query_selector(".face-label").text_content()
    assert label == "happy"
    fills, tracks = card.query_selector_all(".bar-fill"), card.query_selector_all(".bar-track")
    assert len(fills) == len(tracks) == len(CLASSES)
    k = CLASSES.index("happy")  # its bar fills most of its track (the model says about 0.84)
    assert fills[k].bounding_box()["width"] > 0.6 * tracks[k].bounding_box()["width"]
    assert card.query_selector("canvas").get_attribute("aria-label") == "face 1: happy"
    # the box is on the canvas: the middle of its left edge has the label's colour
    request = urllib.request.Request(f"{server}/v1/analyze", data=photo, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/jpeg"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as r:
        x, y, w, h = json.load(r)["faces"][0]["box"]
    rgb = page.evaluate("([x, y]) => Array.from(document.querySelector('.result canvas').getContext('2d')"
                        ".getImageData(x, y, 1, 1).data.slice(0, 3))", [round(x), round(y + h / 2)])  # fmt: skip
    assert max(abs(a - b) for a, b in zip(rgb, HAPPY)) <= 8, rgb
    page.screenshot(path=tmp_path / "photo.png", full_page=True)
    assert page.errors == []
    page.context.close()


def test_phone_sized_screen(server, browser, photo, tmp_path):
    page = open_page(browser, server, width=375, height=800)
    wait_connected(page)
    page.set_input_files("#file-input", files=[{"name": "face.jpg", "mimeType": "image/jpeg", "buffer": photo}])
    page.wait_for_selector(".result[data-faces='1']", timeout=60_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than the screen
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    assert page.errors == []
    page.context.close()


def test_webcam_sends_frames_and_draws(server, browser, tmp_path):
    """The fake camera plays the face clip: frames go out as JPEG, the face comes back, boxes and a timeline show."""
    page = open_page(browser, server, camera=True)
    wait_connected(page)
    sent = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/v1/analyze") and r.method == "POST" else None)
    page.click("#tab-webcam")
    page.click("#cam-toggle")
    page.locator("#cam-stats", has_text="1 face ").wait_for(timeout=60_000)
    page.locator(".timeline .timeline-now", has_text="happy").wait_for(timeout=30_000)
    deadline = time.monotonic() + 30
    while len(sent) < 8 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert len(sent) >= 8
    assert sent[0].headers["content-type"] == "image/jpeg" and sent[0].headers["authorization"] == f"Bearer {TOKEN}"
    drawn = page.evaluate("() => { const c = document.getElementById('overlay'); const d = c.getContext('2d')"
                          ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
                          "for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }")  # fmt: skip
    assert drawn > 500  # the live box and its label
    page.screenshot(path=tmp_path / "webcam.png")
    page.click("#cam-toggle")
    assert page.inner_text("#cam-toggle") == "Start webcam"
    assert page.errors == []
    page.context.close()


def test_page_asks_for_the_token(server, browser):
    page = open_page(browser, server, token=None)
    page.wait_for_selector("#token-box:not([hidden])", timeout=30_000)
    page.fill("#token", TOKEN)
    page.click("#token-box button")
    wait_connected(page)
    assert page.is_hidden("#token-box")
    assert all("401" in e for e in page.errors)  # the first, refused call is the only error
    page.context.close()


def test_graceful_shutdown_finishes_open_requests(tmp_path):
    """SIGTERM while a request is half sent: it still gets its answer, then the server exits and the port closes."""
    if not FACES_ZIP.exists():
        pytest.skip(f"shared faces zip not found at {FACES_ZIP}")
    with zipfile.ZipFile(FACES_ZIP) as z:
        body = z.read(COUPLE)
    with live_server(tmp_path / "server.log") as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.putrequest("POST", "/v1/analyze")
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[: len(body) // 2])
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        conn.send(body[len(body) // 2 :])
        response = conn.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["faces"]) >= 2
        proc.wait(30)
        assert proc.returncode in (0, -signal.SIGTERM)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log
