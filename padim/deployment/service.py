"""`padim serve`: a fitted PaDiM model behind a small HTTP API (FastAPI + uvicorn), with a web page.

Routes
    POST /predict   an image (multipart/form-data field ``file``, or the raw bytes with Content-Type
                    image/* or application/octet-stream) -> JSON: score, normalised score, decision,
                    thresholds, timing, batch size; ``?overlay=true`` adds the heat-map overlay PNG
                    (base64), ``?format=png`` answers with the overlay PNG itself.
    GET  /health    model and limits, JSON.
    GET  /          a self-contained page: drop an image, see the overlay and the verdict.

Bad requests get one-line answers (``{"detail": "..."}``): 408 upload not complete in time, 413 upload or
pixel count over the limit, 415 content type that is not an image, 422 missing or undecodable image,
429 too many uploads at once from one client address, 503 when busy. A client that disconnects
mid-upload is one line in the server log, never a traceback. ``/docs``, ``/redoc`` and ``/openapi.json``
are off unless ``api_docs=True`` (``padim serve --api-docs``).

Memory stays bounded whatever the clients do:
- at most ``max_queue`` requests are in flight (being received, decoded, waiting or scored); the next
  one is answered 503 at once, before its body is read;
- slow or stalled clients cannot hold those slots: a body not received within ``body_timeout_s`` is
  answered 408 and its connection closed, and one client address has at most
  ``max_uploads_per_client`` bodies being received at a time (the next is answered 429 at once);
- uploads are read as a stream and abandoned past ``max_upload_bytes`` (413), a too-large
  Content-Length is refused before anything is read;
- the pixel count is read from the image header before decoding (413), only a fixed set of plain
  image formats is opened, at most ``decode_workers`` images are decoded at the same time, and each is
  shrunk at once to the model's input size (plus a display copy of at most ``max_overlay_side`` px);
- ONE worker thread runs the model: requests that arrive within ``max_wait_ms`` of each other (and
  those that queued up while it was busy) are scored together, up to ``max_batch`` per forward pass.

Scores are exactly those of ``model.predict`` on the same file: the early shrink is the first step of
the model's own preprocessing (same bicubic, antialiased resize), so repeating it is the identity.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import io
import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from padim.errors import PadimError

try:  # the optional `serve` extra
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect

    try:
        import python_multipart  # noqa: F401 - Starlette needs it to parse uploads
    except ImportError:  # python-multipart < 0.0.13
        import multipart  # type: ignore[import-not-found]  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"padim serve needs FastAPI, uvicorn and python-multipart: pip install 'torch-padim[serve]' "
        f"({_exc.name} is missing)"
    ) from _exc

from padim.data import resize
from padim.images import DEFAULT_MAX_PIXELS, RASTER_FORMATS, decode_errors, load_upright, open_image, pil_to_tensor
from padim.errors import ImageTooLarge

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD = 20 * MiB
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_MAX_QUEUE = 64
DEFAULT_BODY_TIMEOUT_S = 30.0  # a whole upload must arrive within this (20 MiB needs ~6 Mbit/s)
DEFAULT_MAX_UPLOADS_PER_CLIENT = 8  # bodies being received at once from one client address
MULTIPART_SLACK = 64 * 1024  # room for the multipart boundaries and part headers around the file
MAX_OVERLAY_SIDE = 1024  # overlays of larger images are drawn at this longest side
SAFE_FORMATS = RASTER_FORMATS  # formats opened from uploads: the library's raster allow-list (padim.images)
VERDICT_COLOURS = {"defect": "#c62828", "ok": "#2e7d32", "score": "#1565c0"}
log = logging.getLogger("uvicorn.error")  # the server's log: its handlers and format


def _fail(status: int, message: str, **headers: str) -> HTTPException:
    """An HTTP error with a one-line message."""
    return HTTPException(status_code=status, detail=" ".join(message.split()), headers=headers or None)


def _size_text(n_bytes: float) -> str:
    """Bytes for people: '20 MiB', '512 KiB', '900 bytes'."""
    if n_bytes >= MiB:
        return f"{n_bytes / MiB:.3g} MiB"
    if n_bytes >= 1024:
        return f"{n_bytes / 1024:.3g} KiB"
    return f"{int(n_bytes)} bytes"


def _clean_name(name: str | None) -> str:
    """An upload's file name, safe to put in a one-line message."""
    if not name:
        return "upload"
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c if c.isprintable() else "?" for c in name)[:120]
    return name or "upload"


# --------------------------------------------------------------------------------------- decoding
@dataclass
class DecodedImage:
    """An uploaded image, shrunk straight away to what the model and the overlay need."""

    name: str
    width: int
    height: int
    model_input: torch.Tensor  # (3, H, W) in [0, 1] at the model's resize size
    display: np.ndarray | None  # (h, w, 3) uint8 for the overlay, longest side <= MAX_OVERLAY_SIDE
    decode_ms: float


def decode_image(data: bytes, name: str, max_pixels: int, image_size: tuple[int, int],
                 overlay_side: int | None) -> DecodedImage:
    """Check and decode an upload (runs in a worker thread); HTTPException 413/422 when it will not do."""
    t0 = time.perf_counter()
    if not data:
        raise _fail(422, f"{name}: empty file")
    try:
        # The library's one decoding path: allow-listed formats, pixel count from the header, EXIF orientation.
        with open_image(io.BytesIO(data), name, max_pixels=max_pixels, warn=False) as img:
            load_upright(img, name, warn=False)  # a warning per upload would flood the log
            width, height = img.size  # upright
            with decode_errors(name):
                rgb = pil_to_tensor(img, name)
    except ImageTooLarge as exc:
        raise _fail(413, str(exc)) from None
    except PadimError as exc:
        raise _fail(422, str(exc)) from None
    except MemoryError:
        raise _fail(413, f"{name}: image too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile or broken files
        raise _fail(422, f"{name}: corrupt or truncated image ({exc})") from None
    # Exactly the first step of Preprocess.resized: the model repeating it on this tensor is the identity.
    model_input = resize(rgb[None], image_size).clamp_(0.0, 1.0)[0].contiguous()
    display = None
    if overlay_side:
        scale = min(1.0, overlay_side / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = resize(rgb[None], size).clamp_(0.0, 1.0)[0]
        display = (small.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return DecodedImage(name, width, height, model_input, display, (time.perf_counter() - t0) * 1000)


def render_overlay(image: DecodedImage, anomaly_map: np.ndarray, model: Any, vmin: float | None,
                   vmax: float | None, threshold: float | None) -> bytes:
    """Side-by-side PNG: the image and its heat map (threshold contour in red when calibrated)."""
    from padim.reporting.overlay import heatmap_overlay, side_by_side

    assert image.display is not None
    size = image.display.shape[:2]
    amap = model.preprocessing.to_original(torch.from_numpy(np.asarray(anomaly_map))[None], size)[0].numpy()
    panel = side_by_side(image.display, heatmap_overlay(image.display, amap, vmin=vmin, vmax=vmax, threshold=threshold))
    buf = io.BytesIO()
    Image.fromarray(panel).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------- batching
@dataclass
class BatchInfo:
    """How a request was scored: with how many others, after how long a wait, in how long."""

    batch_size: int
    queue_ms: float
    inference_ms: float


@dataclass
class _Job:
    payload: Any
    future: asyncio.Future
    enqueued: float


class Batcher:
    """Collect jobs that arrive together and run them as one batch, on ONE thread, one batch at a time.

    After the first job of a batch arrives, waits up to `max_wait_ms` for more (jobs that queued while
    the previous batch ran are taken at once), up to `max_batch`. `run_batch(payloads) -> results`
    runs in the single worker thread; if it raises, the jobs of that batch are retried one by one so
    that one bad input fails only its own request. Started lazily on the running event loop.
    """

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> None:
        if max_batch < 1:
            raise PadimError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise PadimError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.batch_sizes: list[int] = []  # history, for tests and monitoring (last 1000)
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._running: list[_Job] = []

    @property
    def waiting(self) -> int:
        """Jobs queued, not yet running."""
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_started(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="padim-infer")
            self._task = loop.create_task(self._work(self._queue))
        assert self._queue is not None
        return self._queue

    async def submit(self, payload: Any) -> tuple[Any, BatchInfo]:
        """Queue one job and wait for its result."""
        queue = self._ensure_started()
        job = _Job(payload, asyncio.get_running_loop().create_future(), time.perf_counter())
        queue.put_nowait(job)
        return await job.future

    async def _collect(self, queue: asyncio.Queue) -> list[_Job]:
        jobs = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                jobs.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [j for j in jobs if not j.future.done()]  # drop jobs whose caller went away

    async def _work(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(queue)
            if not jobs:
                continue
            self._running = jobs
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run, [j.payload for j in jobs])
            finally:
                self._running = []
            inference_ms = (time.perf_counter() - started) * 1000
            self.batch_sizes = self.batch_sizes[-999:] + [len(jobs)]
            for job, (ok, value) in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if ok:
                    info = BatchInfo(len(jobs), (started - job.enqueued) * 1000, inference_ms)
                    job.future.set_result((value, info))
                else:
                    job.future.set_exception(value)

    def _run(self, payloads: list[Any]) -> list[tuple[bool, Any]]:
        """In the worker thread: the whole batch, or each job alone when the batch fails."""
        try:
            results = self.run_batch(payloads)
            if len(results) != len(payloads):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(payloads)} inputs")
            return [(True, r) for r in results]
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(payloads) == 1:
                return [(False, exc)]
        outcomes: list[tuple[bool, Any]] = []
        for p in payloads:
            try:
                outcomes.append((True, self.run_batch([p])[0]))
            except Exception as exc:  # noqa: BLE001
                outcomes.append((False, exc))
        return outcomes

    async def close(self) -> None:
        """Stop the worker; jobs still waiting fail with RuntimeError."""
        task, queue = self._task, self._queue
        self._task = None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = list(self._running)
        while queue is not None and not queue.empty():
            pending.append(queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


# --------------------------------------------------------------------------------------- reading uploads
class _TooLarge(Exception):
    pass


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The request body, abandoned as soon as it exceeds `limit` bytes."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        yield chunk


def _is_image_type(media: str) -> bool:
    return media.startswith("image/") or media == "application/octet-stream"


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The uploaded image's bytes and name; 413/415/422/400 HTTPExceptions for bad requests."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = media == "multipart/form-data"
    limit = max_bytes + (MULTIPART_SLACK if multipart else 0)
    too_large = f"upload exceeds the limit of {_size_text(max_bytes)}"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _fail(413, f"{too_large} (Content-Length {_size_text(int(declared))})")
    how = ("send multipart/form-data with the image in a field named 'file', or the image bytes "
           "with Content-Type image/* or application/octet-stream")
    if multipart:
        parser = MultiPartParser(request.headers, _capped(request.stream(), limit), max_files=1, max_fields=16)
        try:
            form = await parser.parse()
        except _TooLarge:
            raise _fail(413, too_large) from None
        except MultiPartException as exc:
            raise _fail(400, f"malformed multipart upload: {exc.message}") from None
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise _fail(422, f"no image uploaded: {how}")
            upload = files[0]
            name = _clean_name(upload.filename)
            part_type = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
            if not _is_image_type(part_type):
                raise _fail(415, f"{name}: content type {part_type!r} is not an image; "
                                 "upload image/* (PNG, JPEG, BMP, TIFF, WebP) or application/octet-stream")
            data = await upload.read()
        finally:
            await form.close()
        if len(data) > max_bytes:
            raise _fail(413, f"{name}: {_size_text(len(data))} {too_large.replace('upload ', '')}")
        return data, name
    if media == "application/x-www-form-urlencoded":  # a form, but one that cannot carry a file
        raise _fail(422, f"no image uploaded (a url-encoded form carries no file): {how}")
    if media and not _is_image_type(media):
        raise _fail(415, f"content type {media!r} is not an image: {how}")
    chunks = []
    try:
        async for chunk in _capped(request.stream(), limit):
            chunks.append(chunk)
    except _TooLarge:
        raise _fail(413, too_large) from None
    data = b"".join(chunks)
    if not media:
        raise _fail(422 if not data else 415, ("no image uploaded: " if not data else "missing Content-Type: ") + how)
    return data, _clean_name(request.headers.get("x-filename"))


async def read_upload_within(request: Request, max_bytes: int, timeout_s: float) -> tuple[bytes, str]:
    """`read_upload`, answered 408 (and the connection closed) when the body is not in after `timeout_s`."""
    try:
        return await asyncio.wait_for(read_upload(request, max_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise _fail(408, f"upload not complete after {timeout_s:g} s (the server's body timeout)",
                    Connection="close") from None


def _client_address(request: Request) -> str:
    """The client's address (the proxy's, unless uvicorn trusts its forwarded headers)."""
    return request.client.host if request.client else "unknown"


# --------------------------------------------------------------------------------------- the app
def _describe(model: Any) -> dict[str, Any]:
    pre = model.preprocessing
    calibration = getattr(model, "calibration_", None)
    return {
        "model": model.backbone_.name,
        "n_features": int(model.embedding_dim_),
        "image_size": list(pre.image_size),
        "crop_size": list(pre.crop_size) if pre.crop_size else None,
        "n_samples_seen": int(model.n_samples_seen_),
        "calibrated": calibration is not None,
        "threshold_source": calibration.describe() if calibration is not None else None,
        "engine": model.engine_for_device().describe() if hasattr(model, "engine_for_device") else None,
    }


def create_app(
    model: Any,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    decode_workers: int = 2,
    max_overlay_side: int = MAX_OVERLAY_SIDE,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    max_uploads_per_client: int = DEFAULT_MAX_UPLOADS_PER_CLIENT,
    api_docs: bool = False,
) -> FastAPI:
    """A FastAPI app that scores uploaded images with a fitted PaDiM `model` (see the module docstring)."""
    from padim._version import __version__

    model._require_fitted()
    if hasattr(model, "engine_for_device"):
        model.engine_for_device()  # built (exported, compiled, checked) now, not on the first request
    for label, value, low in (("max_upload_bytes", max_upload_bytes, 1), ("max_pixels", max_pixels, 1),
                              ("max_queue", max_queue, 1), ("decode_workers", decode_workers, 1),
                              ("max_overlay_side", max_overlay_side, 16),
                              ("max_uploads_per_client", max_uploads_per_client, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise PadimError(f"{label} must be an integer >= {low}, got {value!r}")
    if not isinstance(body_timeout_s, (int, float)) or not math.isfinite(body_timeout_s) or body_timeout_s <= 0:
        raise PadimError(f"body_timeout_s must be a finite number of seconds > 0, got {body_timeout_s!r}")

    calibration = getattr(model, "calibration_", None)
    if calibration is not None:  # a fixed colour scale: good pixels blue, the pixel threshold mid-scale
        t = calibration.pixel_threshold
        low = float(calibration.pixel_sample[0])
        scale: tuple[float | None, float | None] = (low, 2 * t - low if t > low else None)
    else:  # no reference: each overlay spans its own range
        scale = (None, None)

    def run_batch(inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
        pred = model.predict(inputs)
        return [{
            "score": float(pred.scores[i]),
            "normalized_score": None if pred.normalized_scores is None else float(pred.normalized_scores[i]),
            "defective": None if pred.decisions is None else bool(pred.decisions[i]),
            "reason": None if pred.reasons is None else pred.reasons[i],
            "frame_score": None if pred.frame_scores is None else float(pred.frame_scores[i]),
            "image_threshold": pred.image_threshold,
            "pixel_threshold": pred.pixel_threshold,
            "map": pred.maps[i],
        } for i in range(len(inputs))]

    batcher = Batcher(run_batch, max_batch, max_wait_ms)
    decode_pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="padim-decode")
    state = {"pending": 0, "served": 0}
    uploading: Counter[str] = Counter()  # bodies being received, per client address
    info = _describe(model)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher._ensure_started()
        yield
        await batcher.close()

    docs = {} if api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="torch-padim", version=__version__, lifespan=lifespan, **docs,
                  description="PaDiM anomaly detection: upload an image, get its anomaly score and heat map.")
    app.state.model, app.state.batcher, app.state.requests = model, batcher, state

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Model, limits and load."""
        return {
            "status": "ok",
            **info,
            "version": __version__,
            "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "max_batch": max_batch,
                       "max_wait_ms": max_wait_ms, "max_queue": max_queue, "body_timeout_s": body_timeout_s,
                       "max_uploads_per_client": max_uploads_per_client},
            "in_flight": state["pending"],
            "served": state["served"],
        }

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        """Drop an image, see the overlay and the verdict (`?demo=/same/origin/image.png` submits one)."""
        return HTMLResponse(_page(info), headers={
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
            "X-Content-Type-Options": "nosniff",
        })

    async def _receive(request: Request, client: str) -> tuple[bytes, str]:
        """The upload, counted against its client's bound while it arrives."""
        uploading[client] += 1
        try:
            return await read_upload_within(request, max_upload_bytes, body_timeout_s)
        except ClientDisconnect:
            log.warning("%s disconnected during the upload to %s: request dropped", client, request.url.path)
            raise _fail(400, "client disconnected during the upload") from None
        finally:
            uploading[client] -= 1
            if uploading[client] <= 0:
                del uploading[client]

    @app.post("/predict")
    async def predict(
        request: Request,
        overlay: bool = Query(False, description="add the heat-map overlay PNG (base64) to the JSON"),
        response_format: Literal["json", "png"] = Query("json", alias="format",
                                                        description="'png': answer with the overlay PNG itself"),
    ) -> Response:
        """Score one image: multipart field `file`, or the raw bytes with Content-Type image/*."""
        t0 = time.perf_counter()
        client = _client_address(request)
        if uploading[client] >= max_uploads_per_client:
            raise _fail(429, f"too many uploads at once from {client} (limit {max_uploads_per_client}), "
                             "retry shortly", **{"Retry-After": "1", "Connection": "close"})
        if state["pending"] >= max_queue:
            raise _fail(503, f"busy: {state['pending']} requests in progress (limit {max_queue}), retry shortly",
                        **{"Retry-After": "1", "Connection": "close"})
        state["pending"] += 1
        try:
            loop = asyncio.get_running_loop()
            data, name = await _receive(request, client)
            want_png = overlay or response_format == "png"
            image = await loop.run_in_executor(
                decode_pool, decode_image, data, name, max_pixels, model.preprocessing.image_size,
                max_overlay_side if want_png else None)
            del data
            try:
                result, batch = await batcher.submit(image.model_input)
            except PadimError as exc:
                raise _fail(422, f"{name}: {exc}") from None
            png = None
            timing = {"decode": image.decode_ms, "queue": batch.queue_ms, "inference": batch.inference_ms}
            if want_png:
                t1 = time.perf_counter()
                png = await loop.run_in_executor(decode_pool, render_overlay, image, result["map"], model,
                                                 scale[0], scale[1], result["pixel_threshold"])
                timing["overlay"] = (time.perf_counter() - t1) * 1000
            timing["total"] = (time.perf_counter() - t0) * 1000
            state["served"] += 1
            if response_format == "png":
                assert png is not None
                verdict = "unknown" if result["defective"] is None else str(result["defective"]).lower()
                return Response(png, media_type="image/png", headers={
                    "X-Padim-Score": f"{result['score']:.6g}", "X-Padim-Defective": verdict,
                    "X-Padim-Timing-Ms": f"{timing['total']:.1f}"})
            body: dict[str, Any] = {
                "image": {"name": name, "width": image.width, "height": image.height},
                "score": result["score"],
                "normalized_score": result["normalized_score"],
                "defective": result["defective"],
                "reason": result["reason"],  # why it is defective ('' for a pass), see padim.frame
                "frame_score": result["frame_score"],
                "image_threshold": result["image_threshold"],
                "pixel_threshold": result["pixel_threshold"],
                "threshold_source": info["threshold_source"],
                "batch_size": batch.batch_size,
                "timing_ms": {k: round(v, 3) for k, v in timing.items()},
            }
            if overlay:
                body["overlay_png_base64"] = base64.b64encode(png).decode("ascii")  # type: ignore[arg-type]
            return JSONResponse(body)
        finally:
            state["pending"] -= 1

    return app


# --------------------------------------------------------------------------------------- running it
def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line PadimError (address in use, unknown host...)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise PadimError(f"cannot listen on {host}:{port}: {reason}") from None


def serve(model: Any, host: str = "127.0.0.1", port: int = 8000, access_log: bool = True, **limits: Any) -> None:
    """Run the service with uvicorn until interrupted (Ctrl-C / SIGTERM); `limits` go to create_app."""
    import uvicorn

    app = create_app(model, **limits)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    cal = "calibrated" if getattr(model, "calibration_", None) is not None else "not calibrated (scores only)"
    print(f"padim serve: {model.backbone_.name}, {cal}; listening on http://{shown}:{bound}/ "
          f"(Ctrl-C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=10))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def running_in_thread(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread on a free port of `host`; yields the base URL."""
    import uvicorn

    sock = _listen(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --------------------------------------------------------------------------------------- the page
def _page(info: dict[str, Any]) -> str:
    """The web page: one self-contained HTML document, no external resources."""
    size = "x".join(map(str, info["crop_size"] or info["image_size"]))
    cal = ("calibrated: " + info["threshold_source"]) if info["calibrated"] else "not calibrated: scores only, no verdict"
    about = html.escape(f"{info['model']}, {info['n_features']} features, input {size}, "
                        f"fitted on {info['n_samples_seen']} images; {cal}")
    css_colours = "".join(f"#verdict.{k}{{background:{v}}}" for k, v in VERDICT_COLOURS.items())
    crop_note = "; dark frame = outside the model's centre crop, not inspected" if info["crop_size"] else ""
    return (_PAGE.replace("{{ABOUT}}", about).replace("{{VERDICT_COLOURS}}", css_colours)
            .replace("{{CROP_NOTE}}", json.dumps(crop_note)))  # a constant, as a JS string literal


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>PaDiM inspection</title>
<style>
body{margin:0;background:#f3f4f7;color:#1c2230;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:880px;margin:0 auto;padding:22px}
h1{font-size:22px;margin:0 0 2px}
#about{color:#5a6375;font-size:13px;margin-bottom:14px}
#drop{border:3px dashed #98a1b3;border-radius:12px;background:#fff;padding:26px 16px;text-align:center;cursor:pointer}
#drop.over{border-color:#1565c0;background:#e9f1fd}
#drop b{color:#1565c0}
#file{display:none}
#status{margin-top:10px;color:#5a6375;min-height:1.4em}
#error{color:#b00020;font-weight:600;white-space:pre-wrap}
#verdict{display:none;margin:14px 0 8px;padding:14px;border-radius:12px;color:#fff;font-size:46px;
 font-weight:800;letter-spacing:3px;text-align:center}
{{VERDICT_COLOURS}}
#details{font:13px/1.5 ui-monospace,SFMono-Regular,Menlo,monospace;color:#2b3242;white-space:pre-wrap}
#overlay{display:none;width:100%;margin-top:10px;border-radius:8px;background:#fff}
#overlay.small{image-rendering:pixelated}
.legend{color:#5a6375;font-size:12px}
</style>
</head>
<body>
<main>
<h1>PaDiM inspection</h1>
<div id="about">{{ABOUT}}</div>
<div id="drop" tabindex="0" role="button" aria-label="choose an image">
 <b>Drop an image here</b> or click to choose one
 <input type="file" id="file" accept="image/*">
</div>
<div id="status"></div>
<div id="error" role="alert"></div>
<div id="verdict" aria-live="polite"></div>
<div id="details"></div>
<img id="overlay" alt="the image and its anomaly heat map">
<div class="legend" id="legend"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const drop = $("drop"), input = $("file");
drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
input.addEventListener("change", () => { if (input.files.length) send(input.files[0], input.files[0].name); });
for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const t of ["dragleave", "drop"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) send(f, f.name); });

function fail(message) {
  $("status").textContent = "";
  $("error").textContent = message;
  document.body.dataset.state = "error";
}

async function send(blob, name) {
  $("error").textContent = "";
  $("status").textContent = "scoring " + name + " ...";
  document.body.dataset.state = "busy";
  const form = new FormData();
  form.append("file", blob, name);
  let response, body;
  try {
    response = await fetch("predict?overlay=true", {method: "POST", body: form});
    body = await response.json();
  } catch (e) {
    fail("request failed: " + e);
    return;
  }
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    fail("HTTP " + response.status + ": " + detail);
    return;
  }
  show(body, name);
}

function fmt(x) { return x === null || x === undefined ? "-" : Number(x).toPrecision(4); }

function show(b, name) {
  const v = $("verdict");
  if (b.defective === null) { v.className = "score"; v.textContent = "score " + fmt(b.score); }
  else if (b.defective) { v.className = "defect"; v.textContent = "DEFECT"; }
  else { v.className = "ok"; v.textContent = "OK"; }
  v.style.display = "block";
  const t = b.timing_ms;
  $("details").textContent =
    name + " (" + b.image.width + "x" + b.image.height + ")\\n" +
    "score " + fmt(b.score) + "   normalised " + fmt(b.normalized_score) +
    "   image threshold " + fmt(b.image_threshold) + "   pixel threshold " + fmt(b.pixel_threshold) + "\\n" +
    "time " + t.total.toFixed(0) + " ms (decode " + t.decode.toFixed(0) + ", queue " + t.queue.toFixed(0) +
    ", model " + t.inference.toFixed(0) + " in a batch of " + b.batch_size + ")";
  const img = $("overlay");
  img.onload = () => {
    img.classList.toggle("small", img.naturalWidth < 600);
    document.body.dataset.state = "done";
  };
  img.src = "data:image/png;base64," + b.overlay_png_base64;
  img.style.display = "block";
  $("legend").textContent = "left: the image; right: anomaly heat map (blue = normal, red = anomalous)" +
    (b.pixel_threshold === null ? "" : ", red contour = pixels above the pixel threshold") + {{CROP_NOTE}};
  $("status").textContent = "";
}

const demo = new URLSearchParams(location.search).get("demo");
if (demo) {
  const url = new URL(demo, location.href);
  if (url.origin !== location.origin) fail("the demo image must come from this server");
  else fetch(url)
    .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.blob(); })
    .then((blob) => send(blob, url.pathname.split("/").pop() || "demo"))
    .catch((e) => fail("cannot load the demo image: " + e.message));
}
</script>
</body>
</html>
"""
