"""Run the app with uvicorn: `serve("127.0.0.1", 8000, "default")` is `emodetect serve`.

The model loads before the port is bound (a bad model name is one error line, and no request ever waits for a
model). Ctrl-C or SIGTERM shut down gracefully: no new connections, open requests finish (up to 10 s), then the
worker pool stops; after Ctrl-C `serve` returns normally.
"""

from __future__ import annotations

import ipaddress
import sys

import uvicorn

from emodetect.errors import EmodetectError
from emodetect.serve.app import MAX_UPLOAD_BYTES, QUEUE, create_app

GRACEFUL_SHUTDOWN_S = 10


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str = "127.0.0.1", port: int = 8000, model="default", detector: str = "mtcnn", *,
          token: str | None = None, cors=None, max_upload_bytes: int = MAX_UPLOAD_BYTES, workers: int | None = None,
          queue: int = QUEUE, access_log: bool = True) -> None:  # fmt: skip
    """Serve the API and the page until interrupted. Binds 127.0.0.1 unless `host` says otherwise."""
    if not 0 <= port <= 65535:
        raise EmodetectError(f"--port must be between 0 and 65535, got {port}")
    app = create_app(model, detector, token=token, cors=cors, max_upload_bytes=max_upload_bytes, workers=workers,
                     queue=queue)  # fmt: skip
    pool = app.state.pool
    pool.warm_up()
    if not is_loopback(host) and token is None:
        print(f"emodetect: warning: serving on {host} without --token: anyone who can reach this port can use the API",
              file=sys.stderr)  # fmt: skip
    shown = f"[{host}]" if ":" in host else host
    print(f"emodetect: serving http://{shown}:{port}/ ({pool.workers} worker(s), queue {pool.queue_size}); "
          "Ctrl-C stops", file=sys.stderr)  # fmt: skip
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, server_header=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, timeout_keep_alive=5,
                            limit_concurrency=max(64, 4 * (pool.workers + pool.queue_size)))  # fmt: skip
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down gracefully: the normal way to stop
        print("emodetect: stopped", file=sys.stderr)
