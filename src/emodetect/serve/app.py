"""The web app of `emodetect serve`: an HTTP API over `Analyzer` and the offline page that uses it.

    from emodetect.serve.app import create_app
    app = create_app("default", token="s3cret")     # a FastAPI app; `emodetect.serve.server.serve` runs it

    POST /v1/analyze   one image (multipart field `file`, or the raw body) -> its faces, as `emodetect predict`'s JSON
    GET  /v1/health    liveness and the load of the worker pool
    GET  /v1/model     the model's classes, input, calibration and test-split numbers
    GET  /             the web page (photos and webcam), from static/; /docs and /openapi.json describe the API

With a token, every /v1 call needs `Authorization: Bearer <token>`. Uploads are capped while they stream (413);
images are checked by signature (415) and by pixel count before decoding (422); inference runs in a bounded
thread pool, and a request beyond the bounded queue gets 503 with `Retry-After`. Every error reaches the client
as `{"error": "<one line>"}`: never a traceback, a file path or a library version.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from emodetect.data.decode import UnreadableImage, sniff_format
from emodetect.errors import EmodetectError
from emodetect.inference.analyze import MIN_FACE_SIZE, Analyzer, load_image
from emodetect.models.artifact import SHIPPED_MODELS

MAX_UPLOAD_BYTES = 10_000_000
QUEUE = 32  # requests waiting for a worker; more than workers + QUEUE at once get 503
MAX_FACES = 100  # the most a client may ask for per image
MULTIPART_SLACK = 64 * 1024  # a multipart body may exceed the file's cap by its boundaries and part headers
READ_TIMEOUT_S = 30  # an upload slower than this gets 408 (a slow client must not hold a slot for ever)
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {  # the page loads nothing from elsewhere, and says so to the browser
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
    "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'",
    "Permissions-Policy": "camera=(self), microphone=()",
    "Cache-Control": "no-cache",
}
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


# ------------------------------------------------------------------------------------------------- schema


class FaceOut(BaseModel):
    face: int = Field(description="index in the image, largest face first")
    box: list[float] = Field(description="x, y, w, h in pixels of the image (may reach past its border)")
    score: float = Field(description="the detector's confidence that this is a face")
    landmarks: list[list[float]] | None = Field(description="(5, 2): eyes, nose, mouth corners; null for haar")
    label: str = Field(description="the most probable emotion, or 'uncertain' below min_confidence")
    confidence: float = Field(description="the top probability")
    probabilities: dict[str, float] = Field(description="calibrated, one per emotion, summing to 1")


class AnalyzeOut(BaseModel):
    width: int
    height: int
    faces: list[FaceOut]


class HealthOut(BaseModel):
    status: str
    workers: int
    queue: int
    in_flight: int
    max_upload_bytes: int


class ModelOut(BaseModel):
    name: str = Field(description="'default', 'fast', or 'custom' for a model file")
    architecture: str
    classes: list[str]
    input_size: int
    color_mode: str
    temperature: float
    tta_flip: bool
    backend: str = Field(description="how the network runs: 'int8' (its shipped int8 graph), 'onnx', 'fused' or 'torch'")
    label_source: str | None
    detector: str
    test_accuracy: float | None
    test_macro_f1: float | None


class ErrorOut(BaseModel):
    error: str


# ----------------------------------------------------------------------------------------- worker pool


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class InferencePool:
    """`workers` threads, each borrowing one of `workers` Analyzers; at most `workers + queue` requests at once.

    Torch and ONNX Runtime release the GIL, so the threads run in parallel; each sets torch to `threads` intra-op
    threads (the Analyzers' ONNX sessions are made with as many: see `create_analyzers`)."""

    def __init__(self, analyzers: list[Analyzer], queue_size: int, threads: int = 1):
        self.workers = len(analyzers)
        self.queue_size = queue_size
        self.in_flight = 0
        self._idle: queue.SimpleQueue[Analyzer] = queue.SimpleQueue()
        for a in analyzers:
            self._idle.put(a)
        self._threads = threads
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def admit(self) -> bool:
        """Take a slot (True), or False when workers + queue requests are already in."""
        with self._lock:
            if self.in_flight >= self.workers + self.queue_size:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    async def run(self, fn, *args):
        """fn(analyzer, *args) on a worker thread, with an Analyzer no other thread is using; gives back the slot
        `admit` took when that work ends, not when the request does (a client that hangs up cancels the request,
        but a running job runs on, and still holds its worker)."""
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, "emodetect-infer", initializer=torch.set_num_threads,
                                                    initargs=(self._threads,))  # fmt: skip
            job = self._executor.submit(self._borrow, fn, *args)
        except BaseException:
            self.release()
            raise
        job.add_done_callback(lambda _: self.release())  # run, failed, or cancelled while still queued
        return await asyncio.wrap_future(job)

    def _borrow(self, fn, *args):
        analyzer = self._idle.get()
        try:
            return fn(analyzer, *args)
        finally:
            self._idle.put(analyzer)

    def warm_up(self) -> None:
        """Load each detector's networks now (they load on first use), not on the first request."""
        blank = np.full((64, 64, 3), 128, np.uint8)
        analyzers = [self._idle.get() for _ in range(self.workers)]
        try:
            for a in analyzers:
                a.analyze(blank)
        finally:
            for a in analyzers:
                self._idle.put(a)

    def close(self) -> None:
        """Finish the running jobs, drop the waiting ones."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def create_analyzers(model, detector: str, n: int, threads: int, min_face_size: int) -> list[Analyzer]:
    """n Analyzers for n worker threads; an ONNX Runtime session gets `threads` intra-op threads, not every core
    (n sessions that each spin on every core run at half the speed of n with one thread each, on 2 cores)."""
    return [Analyzer(model, detector, min_face_size=min_face_size, threads=threads) for _ in range(n)]


def analyze_image(analyzer: Analyzer, data: bytes, min_confidence: float, max_faces: int | None) -> dict:
    """Bytes -> {width, height, faces}, the faces as `emodetect predict` writes them (runs on a worker)."""
    rgb = load_image(data)
    analyzer.min_confidence, analyzer.max_faces = min_confidence, max_faces  # this thread's own analyzer
    faces = analyzer.analyze(rgb)
    return {"width": rgb.shape[1], "height": rgb.shape[0],
            "faces": [{"face": i, **f.to_dict()} for i, f in enumerate(faces)]}  # fmt: skip


# ------------------------------------------------------------------------------------------------ uploads


class _TooLarge(Exception):
    pass


def public_reason(message: str) -> str:
    """A decoder's reason as one line for a client: the library's own words (paths, versions) left out."""
    line = str(message).strip().splitlines()[0] if str(message).strip() else "unreadable image"
    if line.startswith("cannot be decoded"):
        return "cannot be decoded: damaged or unsupported image data"
    return line[:200]


async def read_upload(request: Request, limit: int) -> bytes:
    """The image: the multipart field `file` or the raw body, reading at most `limit` bytes (+ multipart slack)."""
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    cap = limit + (MULTIPART_SLACK if multipart else 0)
    too_large = HTTPException(413, f"the upload is over the limit of {limit:,} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    seen = 0

    async def capped_receive():  # counts what really arrives: Content-Length can lie, or be absent (chunked)
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > cap:
            raise _TooLarge
        return message

    capped = Request(request.scope, capped_receive)
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            data = await (_form_file(capped, limit) if multipart else capped.body())
    except _TooLarge:
        raise too_large from None
    except TimeoutError:
        raise HTTPException(408, f"the upload took longer than {READ_TIMEOUT_S} s") from None
    except ClientDisconnect:  # nobody is left to answer; this only keeps the server's log free of a traceback
        raise HTTPException(400, "the client closed the connection during the upload") from None
    if len(data) > limit:
        raise too_large
    if not data:
        raise HTTPException(422, "empty upload: send one image as the multipart field 'file' or as the request body")
    return data


async def _form_file(request: Request, limit: int) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=limit)
    except (HTTPException, _TooLarge, ClientDisconnect):
        raise
    except Exception:  # python-multipart's parse errors
        raise HTTPException(400, "malformed multipart form") from None
    try:
        part = form.get("file")
        if part is None:
            raise HTTPException(422, "no form field 'file': send the image as the multipart field 'file'")
        return part.encode() if isinstance(part, str) else await part.read()
    finally:
        await form.close()


# ------------------------------------------------------------------------------------------------ the model


def key_numbers(meta: dict) -> tuple[float | None, float | None]:
    """Test accuracy and macro-F1 as the model file records them (`emodetect ship` writes them in)."""
    card = meta.get("card") or {}
    accuracy, macro_f1 = card.get("test_accuracy"), card.get("test_macro_f1")
    return (float(accuracy) if accuracy is not None else None), (float(macro_f1) if macro_f1 is not None else None)


def describe_model(analyzer: Analyzer, model, detector: str) -> dict:
    """What /v1/model says: nothing about file paths or library versions."""
    meta = analyzer.predictor.artifact.meta
    name = model if isinstance(model, str) and model in SHIPPED_MODELS and not Path(model).exists() else "custom"
    accuracy, macro_f1 = key_numbers(meta)
    return {"name": name, "architecture": meta["model"], "classes": list(meta["classes"]),
            "input_size": int(meta["preprocess"]["size"]), "color_mode": meta["preprocess"]["mode"],
            "temperature": float(meta.get("temperature", 1.0)), "tta_flip": bool(meta.get("tta_flip", False)),
            "backend": analyzer.predictor.backend, "label_source": meta.get("label_source"), "detector": detector, "test_accuracy": accuracy,
            "test_macro_f1": macro_f1}  # fmt: skip


# -------------------------------------------------------------------------------------------- error bodies


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    return _error(exc.status_code, public_reason(message), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return _error(422, public_reason(f"{where}: {first.get('msg', 'invalid value')}"))


async def _emodetect_error(request: Request, exc: EmodetectError) -> JSONResponse:
    return _error(422, public_reason(str(exc)))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # the traceback goes to the server's log (Starlette re-raises it for uvicorn), never to the client
    return _error(500, "internal server error")


# ------------------------------------------------------------------------------------------------ the app


def _check_options(token, cors, max_upload_bytes, workers, queue_size) -> list[str]:
    if token is not None and (not token or not token.isprintable() or token != token.strip()):
        raise EmodetectError("--token must be a non-empty printable string without surrounding spaces")
    origins = [] if cors is None else [cors] if isinstance(cors, str) else list(cors)
    for origin in origins:
        if origin != "*" and not ORIGIN.match(origin):
            raise EmodetectError(f"--cors expects an origin such as https://example.org (no path), got {origin!r}")
    if max_upload_bytes < 1:
        raise EmodetectError(f"the upload limit must be at least 1 byte, got {max_upload_bytes}")
    if workers is not None and workers < 1:
        raise EmodetectError(f"--workers must be at least 1, got {workers}")
    if queue_size < 0:
        raise EmodetectError(f"--queue must be 0 or more, got {queue_size}")
    return origins


def create_app(model="default", detector: str = "mtcnn", *, token: str | None = None, cors=None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, workers: int | None = None, queue: int = QUEUE,
               min_face_size: int = MIN_FACE_SIZE) -> FastAPI:  # fmt: skip
    """The API and the page for one model and detector, loaded here (a bad name fails now, in one line).

    token: every /v1 call needs `Authorization: Bearer <token>`. cors: an origin (or a list) allowed to call the
    API from another site; none by default. workers: inference threads (default: one per core), each with its
    own Analyzer. queue: requests that may wait for a worker; beyond it, 503 with Retry-After."""
    origins = _check_options(token, cors, max_upload_bytes, workers, queue)
    n_workers = workers or n_cores()
    threads = max(1, n_cores() // n_workers)
    analyzers = create_analyzers(model, detector, n_workers, threads, min_face_size)
    pool = InferencePool(analyzers, queue, threads)
    info = describe_model(analyzers[0], model, detector)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close()  # uvicorn has stopped taking requests and finished the open ones (graceful shutdown)

    app = FastAPI(title="emodetect", version="1", lifespan=lifespan, redoc_url=None,
                  description="Facial emotion recognition: the faces in a photo and the emotion of each.")  # fmt: skip
    app.state.pool = pool
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(EmodetectError, _emodetect_error)
    app.add_exception_handler(Exception, _internal_error)
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)  # fmt: skip

    @app.middleware("http")
    async def no_sniffing(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    api = APIRouter(prefix="/v1", dependencies=[Depends(_token_check(token))] if token else [],
                    responses={401: {"model": ErrorOut}, 422: {"model": ErrorOut}, 500: {"model": ErrorOut}})  # fmt: skip

    @api.post("/analyze", response_model=AnalyzeOut, openapi_extra=_ANALYZE_BODY,
              responses={400: {"model": ErrorOut}, 408: {"model": ErrorOut}, 413: {"model": ErrorOut},
                         415: {"model": ErrorOut}, 503: {"model": ErrorOut}})  # fmt: skip
    async def analyze(request: Request, min_confidence: float = Query(0.0, ge=0, le=1),
                      max_faces: int = Query(MAX_FACES, ge=1, le=MAX_FACES)) -> dict:  # fmt: skip
        """The faces in one image, largest first (at most max_faces, 100 by default), each with its box,
        landmarks, detection score and the probability of every emotion (the schema of `emodetect predict`'s
        JSON)."""
        # the upload is read before a worker slot is taken: a slow client holds a connection, never a worker
        data = await read_upload(request, max_upload_bytes)
        if sniff_format(data) == "unknown":
            raise HTTPException(415, "not an image file (JPEG, PNG, WebP, BMP, TIFF or GIF expected)")
        if not pool.admit():
            raise HTTPException(503, "the server is busy; retry in a second", headers={"Retry-After": "1"})
        try:  # the slot is given back when the work ends (InferencePool.run)
            return await pool.run(analyze_image, data, min_confidence, max_faces)
        except UnreadableImage as exc:
            raise HTTPException(422, public_reason(str(exc))) from None

    @api.get("/health", response_model=HealthOut)
    async def health() -> dict:
        return {"status": "ok", "workers": pool.workers, "queue": pool.queue_size, "in_flight": pool.in_flight,
                "max_upload_bytes": max_upload_bytes}  # fmt: skip

    @api.get("/model", response_model=ModelOut)
    async def model_info() -> dict:
        return info

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _token_check(token: str):
    bearer = HTTPBearer(auto_error=False, description="the token given to `emodetect serve --token`")
    expected = token.encode()

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode("utf-8", "replace") if credentials else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return require_token


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_ANALYZE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/jpeg": _BINARY, "image/png": _BINARY, "application/octet-stream": _BINARY}}}  # fmt: skip
