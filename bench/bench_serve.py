"""Load on a live `emodetect serve`: N requests at concurrency C against 127.0.0.1, then a table.

    python bench/bench_serve.py --model fast --requests 2000 --concurrency 4 16

Starts the server itself (a subprocess on a free port, access log off), warms it up, then for each concurrency
sends the same single-face 640x480 JPEG (an AffectNet crop from ../shared on a plain background, or --image)
as the raw body of POST /v1/analyze from C threads with keep-alive connections. Prints requests/s, p50/p95/p99
latency, the error count (anything but 200) and the server's resident memory after warm-up and after each run.
Targets on 2 cores: >= 50 requests/s with the fast model, p95 <= 100 ms at concurrency 4, zero errors, flat memory.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

AFFECTNET = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "affectnet" / "affectnet-training-data.zip"
FACE = "happy/image0032221.jpg"


def face_photo(width: int = 640, height: int = 480) -> bytes:
    """A JPEG with one face: a 96x96 AffectNet crop enlarged to 192 px on a grey gradient."""
    with zipfile.ZipFile(AFFECTNET.resolve()) as z:
        crop = cv2.imdecode(np.frombuffer(z.read(FACE), np.uint8), cv2.IMREAD_COLOR)
    photo = np.empty((height, width, 3), np.uint8)
    photo[:] = np.linspace(70, 190, width, dtype=np.float32)[None, :, None].astype(np.uint8)
    top, left = (height - 192) // 2, (width - 192) // 2
    photo[top : top + 192, left : left + 192] = cv2.resize(crop, (192, 192), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int, model: str, detector: str, workers: int | None, queue: int) -> subprocess.Popen:
    code = (f"from emodetect.serve.server import serve; serve('127.0.0.1', {port}, {model!r}, {detector!r}, "
            f"workers={workers!r}, queue={queue!r}, access_log=False)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    sys.exit("the server did not start in 300 s")


def run_load(port: int, body: bytes, n_requests: int, concurrency: int) -> tuple[float, list[float], Counter]:
    """(seconds, latencies in ms of the 200s, status counts) for n_requests sent by `concurrency` threads."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    left = [n_requests]

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/analyze", body, {"Content-Type": "image/jpeg"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            ms = 1000 * (time.perf_counter() - t0)
            with lock:
                statuses[status] += 1
                if status == 200:
                    latencies.append(ms)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, statuses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="default, fast, a model file or a run folder")
    p.add_argument("--detector", default="mtcnn")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    p.add_argument("--workers", type=int, default=None, help="server inference threads (default: one per core)")
    p.add_argument("--queue", type=int, default=32, help="server queue (requests beyond workers + queue get 503)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--image", type=Path, default=None, help="the photo to send (default: a single-face 640x480)")
    args = p.parse_args(argv)

    body = args.image.read_bytes() if args.image else face_photo()
    port = free_port()
    server = start_server(port, args.model, args.detector, args.workers, args.queue)
    try:
        rss_start = rss_mb(server.pid)
        _, _, warm = run_load(port, body, args.warmup, 1)
        if warm[200] != args.warmup:
            sys.exit(f"warm-up failed: {dict(warm)}")
        rss_warm = rss_mb(server.pid)
        print(f"model {args.model}, detector {args.detector}, {os.cpu_count()} cores, body {len(body):,} bytes; "
              f"server RSS {rss_start:.0f} MB at start, {rss_warm:.0f} MB after {args.warmup} warm-up requests")  # fmt: skip
        print(f"{'conc':>5} {'requests':>9} {'seconds':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
              f"{'errors':>7} {'RSS MB':>7}")  # fmt: skip
        for c in args.concurrency:
            seconds, lat, statuses = run_load(port, body, args.requests, c)
            p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat else (float("nan"),) * 3
            errors = sum(n for s, n in statuses.items() if s != 200)
            print(f"{c:>5} {args.requests:>9} {seconds:>8.1f} {statuses[200] / seconds:>7.1f} {p50:>7.0f} {p95:>7.0f} "
                  f"{p99:>7.0f} {errors:>7} {rss_mb(server.pid):>7.0f}")  # fmt: skip
            if errors:
                print(f"      statuses: {dict(statuses)}")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
