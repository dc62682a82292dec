"""The FastAPI app: its routes, the state they share, and running it with uvicorn."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.requests import ClientDisconnect

from padim_runtime.batching import BatchInfo, Batcher
from padim_runtime.page import page_headers
from padim_runtime.service import listen as listen_on
from padim_runtime.uploads import BUSY, client_address, drain, fail, read_upload_within

from padim.deployment.service.limits import Limits
from padim.deployment.service.page import render_page
from padim.deployment.service.uploads import DecodedImage, decode_image
from padim.errors import PadimEnvironmentError, PadimError

log = logging.getLogger("uvicorn.error")  # the server's log: its handlers and format


def describe_model(model: Any) -> dict[str, Any]:
    """What /health and the page say about the model."""
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


def render_overlay(image: DecodedImage, anomaly_map: np.ndarray, model: Any, *, vmin: float | None,
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


def _prediction_rows(pred: Any) -> list[dict[str, Any]]:
    """One dict per image of a Prediction: what an answer needs, in plain Python types."""
    from padim.reporting.results import prediction_record

    return [{**prediction_record(pred, i), "image_threshold": pred.image_threshold,
             "pixel_threshold": pred.pixel_threshold, "map": pred.maps[i]} for i in range(len(pred.scores))]


def _png_response(png: bytes, result: dict[str, Any], timing: dict[str, float]) -> Response:
    """?format=png: the overlay itself, the score and verdict in headers."""
    verdict = "unknown" if result["defective"] is None else str(result["defective"]).lower()
    return Response(png, media_type="image/png", headers={
        "X-Padim-Score": f"{result['score']:.6g}", "X-Padim-Defective": verdict,
        "X-Padim-Timing-Ms": f"{timing['total']:.1f}"})


def _json_body(image: DecodedImage, result: dict[str, Any], batch: BatchInfo, timing: dict[str, float],
               threshold_source: str | None) -> dict[str, Any]:
    """The JSON answer to one scored image (without the overlay)."""
    return {
        "image": {"name": image.name, "width": image.width, "height": image.height},
        **{k: result[k] for k in ("score", "normalized_score", "defective")},
        "reason": result["reason"],  # why it is defective ('' for a pass), see padim.frame
        **{k: result[k] for k in ("frame_score", "image_threshold", "pixel_threshold")},
        "threshold_source": threshold_source,
        "batch_size": batch.batch_size,
        "timing_ms": {k: round(v, 3) for k, v in timing.items()},
    }


class Service:
    """The one owner of what the routes share.

    Parameters
    ----------
    model : PaDiM
        A fitted model (anything with PaDiM's predict, preprocessing and calibration_).
    limits : Limits
        Checked limits.

    Attributes
    ----------
    batcher : Batcher
        Runs model.predict on one worker thread, batching requests that arrive together.
    counts : dict
        ``pending`` (requests in flight) and ``served`` (answered with a score).
    info : dict
        What /health says about the model.
    """

    def __init__(self, model: Any, limits: Limits) -> None:
        from padim.reporting.overlay import colour_scale

        self.model, self.limits, self.info = model, limits, describe_model(model)
        self.scale = colour_scale(basis="calibration", calibration=getattr(model, "calibration_", None))
        self.batcher = Batcher(self.run_batch, max_batch=limits.max_batch, max_wait_ms=limits.max_wait_ms)
        self.decode_pool = ThreadPoolExecutor(max_workers=limits.decode_workers, thread_name_prefix="padim-decode")
        self.counts = {"pending": 0, "served": 0}
        self.uploading: Counter[str] = Counter()  # bodies being received, per client address

    def run_batch(self, inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
        """In the batcher's thread: score decoded images."""
        return _prediction_rows(self.model.predict(inputs))

    def health(self, version: str) -> dict[str, Any]:
        """Model, limits and load."""
        return {"status": "ok", **self.info, "version": version, "limits": self.limits.published(),
                "in_flight": self.counts["pending"], "served": self.counts["served"]}

    def admit(self, client: str) -> None:
        """Refuse a request at once, before its body is read: 429 for a busy client, 503 for a busy server."""
        per_client, queue = self.limits.max_uploads_per_client, self.limits.max_queue
        if self.uploading[client] >= per_client:
            raise fail(429, f"too many uploads at once from {client} (limit {per_client}), retry shortly", **BUSY)
        if self.counts["pending"] >= queue:
            raise fail(503, f"busy: {self.counts['pending']} requests in progress (limit {queue}), retry shortly",
                       **BUSY)

    async def receive(self, request: Request, client: str) -> tuple[bytes, str]:
        """The upload, counted against its client's bound while it arrives."""
        self.uploading[client] += 1
        try:
            return await read_upload_within(request, self.limits.max_upload_bytes, self.limits.body_timeout_s)
        except ClientDisconnect:
            log.warning("%s disconnected during the upload to %s: request dropped", client, request.url.path)
            raise fail(400, "client disconnected during the upload") from None
        finally:
            self.uploading[client] -= 1
            if self.uploading[client] <= 0:
                del self.uploading[client]

    async def in_pool(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """call(*args, **kwargs) in the decode pool."""
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool,
                                                                functools.partial(call, *args, **kwargs))

    async def score(self, image: DecodedImage) -> tuple[dict[str, Any], BatchInfo]:
        """The image scored in the next batch; 422 when the model refuses it."""
        try:
            return await self.batcher.submit(image.model_input)
        except PadimError as exc:
            raise fail(422, f"{image.name}: {exc}") from None

    async def overlay(self, image: DecodedImage, result: dict[str, Any]) -> bytes:
        """The overlay PNG on the service's colour scale."""
        vmin, vmax = self.scale
        return await self.in_pool(render_overlay, image, result["map"], self.model, vmin=vmin, vmax=vmax,
                                  threshold=result["pixel_threshold"])

    async def predict(self, request: Request, *, overlay: bool, response_format: str) -> Response:
        """Admit, receive, decode, score and answer one upload."""
        t0 = time.perf_counter()
        client = client_address(request)
        try:
            self.admit(client)
        except HTTPException:
            await drain(request)
            raise
        self.counts["pending"] += 1
        try:
            return await self._answer(request, client, t0, overlay=overlay, response_format=response_format)
        finally:
            self.counts["pending"] -= 1

    async def _answer(self, request: Request, client: str, t0: float, *, overlay: bool,
                      response_format: str) -> Response:
        """predict, once the request is admitted."""
        data, name = await self.receive(request, client)
        want_png = overlay or response_format == "png"
        image = await self.in_pool(decode_image, data, name, self.limits.max_pixels, self.model.preprocessing.image_size,
                                   overlay_side=self.limits.max_overlay_side if want_png else None)
        del data
        result, batch = await self.score(image)
        timing = {"decode": image.decode_ms, "queue": batch.queue_ms, "inference": batch.inference_ms}
        png = None
        if want_png:
            t1 = time.perf_counter()
            png = await self.overlay(image, result)
            timing["overlay"] = (time.perf_counter() - t1) * 1000
        timing["total"] = (time.perf_counter() - t0) * 1000
        self.counts["served"] += 1
        if response_format == "png":
            assert png is not None
            return _png_response(png, result, timing)
        body = _json_body(image, result, batch, timing, self.info["threshold_source"])
        if overlay:
            body["overlay_png_base64"] = base64.b64encode(png).decode("ascii")  # type: ignore[arg-type]
        return JSONResponse(body)


def _routes(app: FastAPI, service: Service, version: str) -> None:
    """Register GET /health, GET / and POST /predict."""
    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Model, limits and load."""
        return service.health(version)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        """Drop an image, see the overlay and the verdict (`?demo=/same/origin/image.png` submits one)."""
        return HTMLResponse(render_page(service.info), headers=page_headers(inline=True))

    @app.post("/predict")
    async def predict(
        request: Request,
        overlay: bool = Query(False, description="add the heat-map overlay PNG (base64) to the JSON"),
        response_format: Literal["json", "png"] = Query("json", alias="format",
                                                        description="'png': answer with the overlay PNG itself"),
    ) -> Response:
        """Score one image: multipart field `file`, or the raw bytes with Content-Type image/*."""
        return await service.predict(request, overlay=overlay, response_format=response_format)


def create_app(model: Any, *, api_docs: bool = False, **limits: Any) -> FastAPI:
    """A FastAPI app that scores uploaded images with a fitted PaDiM `model` (see padim.deployment.service).

    `limits` are the fields of Limits (max_upload_bytes, max_pixels, max_batch, ...); api_docs serves
    FastAPI's /docs, /redoc and /openapi.json.
    """
    from padim._version import __version__

    model._require_fitted()
    if hasattr(model, "engine_for_device"):
        model.engine_for_device()  # built (exported, compiled, checked) now, not on the first request
    checked = Limits(**limits)
    checked.check()
    service = Service(model, checked)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        yield
        await service.batcher.close()

    docs = {} if api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="torch-padim", version=__version__, lifespan=lifespan, **docs,
                  description="PaDiM anomaly detection: upload an image, get its anomaly score and heat map.")
    app.state.model, app.state.batcher, app.state.requests = model, service.batcher, service.counts
    _routes(app, service, __version__)
    return app


# --------------------------------------------------------------------------------------- running it
def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line PadimEnvironmentError (address in use, unknown host...)."""
    return listen_on(host, port, error=PadimEnvironmentError)


def serve(model: Any, *, host: str = "127.0.0.1", port: int = 8000, access_log: bool = True, **limits: Any) -> None:
    """Run the service with uvicorn until interrupted (Ctrl-C / SIGTERM); `limits` go to create_app."""
    import uvicorn

    app = create_app(model, **limits)
    sock = listen(host, port)
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
def running_in_thread(app: FastAPI, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread on a free port of `host`; yields the base URL."""
    import uvicorn

    sock = listen(host, 0)
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
