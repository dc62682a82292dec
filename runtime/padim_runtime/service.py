"""`padim-run serve`: bundles behind the HTTP API and page of `padim serve`, with drift monitoring and /metrics.

Routes
    POST /predict               the default bundle (the only one, or the one named by --default): an image as the
                                multipart field ``file``, or the raw bytes with Content-Type image/* or
                                application/octet-stream -> JSON with the same fields as ``padim serve``;
                                ``?overlay=true`` adds the heat-map PNG (base64), ``?format=png`` answers with it
    POST /models/{name}/predict the same, for the bundle of that name
    GET  /models                the bundles served, the default one, what each is
    GET  /models/{name}/drift   the drift window of that bundle (padim_runtime.drift); GET /drift: every bundle's
    GET  /metrics               counters, latency and drift gauges in the Prometheus text format
    GET  /health                bundles, limits and load
    GET  /                      the page: drop an image, see the overlay, the verdict and the drift panel

Bad requests get one-line answers ``{"detail": "..."}``, with the main package's status codes: 400 malformed
multipart, 404 unknown bundle, 408 upload not complete in time, 413 too many bytes or pixels, 415 not an image
type, 422 missing or undecodable image or bad query, 429 too many uploads at once from one client address,
503 busy (``max_queue`` requests in flight). One thread runs the models, one batch at a time: requests for a
bundle that arrive within ``max_wait_ms`` of each other are scored together, up to ``max_batch``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # the optional `serve` extra
    from fastapi import FastAPI, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    try:
        import python_multipart  # noqa: F401 - Starlette parses uploads with it
    except ImportError:  # python-multipart < 0.0.13
        import multipart  # type: ignore[import-not-found]  # noqa: F401
except ImportError as _exc:
    raise ImportError(f"padim-run serve needs FastAPI, uvicorn and python-multipart: "
                      f"pip install 'padim-runtime[serve]' ({_exc.name} is missing)") from _exc

from padim_runtime import __version__
from padim_runtime.batching import Batcher
from padim_runtime.bundle import BundleError, check_name
from padim_runtime.drift import DEFAULT_WINDOW, DriftMonitor
from padim_runtime.image import MAX_PIXELS
from padim_runtime.metrics import CONTENT_TYPE, ModelStats, exposition
from padim_runtime.overlay import calibrated_scale, overlay_png
from padim_runtime.page import page_headers, render_page, template
from padim_runtime.predictor import Predictor
from padim_runtime.uploads import BUSY, MiB, Decoded, client_address, decode_upload, drain, fail, read_upload_within

LIMITS = {"max_upload_bytes": 20 * MiB, "max_pixels": MAX_PIXELS, "max_batch": 8, "max_wait_ms": 10.0,
          "max_queue": 64, "decode_workers": 2, "max_overlay_side": 1024, "body_timeout_s": 30.0,
          "max_uploads_per_client": 8}
ASSETS = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
log = logging.getLogger("uvicorn.error")


def threshold_source(calibration: dict[str, Any] | None) -> str | None:
    """How the thresholds were chosen, in the main package's words (Calibration.describe)."""
    if not calibration:
        return None
    frame = calibration.get("frame_threshold")
    return (f"thresholds at a {calibration['fpr']:.2%} false-positive rate on {len(calibration['image_scores'])} "
            f"good images ({calibration['source']}): image {calibration['image_threshold']:.4g}, "
            f"pixel {calibration['pixel_threshold']:.4g}" + ("" if frame is None else f", frame {frame:.4g}"))


def describe(predictor: Predictor) -> dict[str, Any]:
    """A bundle as /health tells it (the fields of `padim serve`'s)."""
    m, spec = predictor.bundle.manifest, predictor.spec
    provenance = m.get("provenance") or {}
    return {"model": (provenance.get("backbone") or {}).get("name", "unknown"), "n_features": int(m["dim"]),
            "image_size": list(spec["image_size"]), "crop_size": list(spec["crop_size"]) if spec["crop_size"] else None,
            "n_samples_seen": provenance.get("n_samples_seen"), "calibrated": predictor.calibration is not None,
            "threshold_source": threshold_source(predictor.calibration), "engine": predictor.engine.name,
            "frame_check": m.get("frame") is not None}


@dataclass
class Served:
    """One bundle behind the service, under its name."""

    name: str
    predictor: Predictor
    batcher: Batcher
    drift: DriftMonitor
    stats: ModelStats
    info: dict[str, Any]

    def flags(self, reason: str) -> tuple[bool, bool]:
        """(blank, unlike): which frame checks a result's reason names."""
        parts = reason.split("; ") if reason else []
        return self.predictor.reasons[0] in parts, self.predictor.reasons[1] in parts

    def scale(self) -> tuple[float | None, float | None]:
        """The overlay's colour scale: the full package's (the pixel threshold mid-scale), else its own."""
        return calibrated_scale(self.predictor.calibration)


def _run_batch(predictor: Predictor, images: list[Decoded]) -> list[Any]:
    """In the model thread: a batch of decoded uploads scored, maps at their display size."""
    return predictor.score_decoded([d.model_input for d in images], [d.name for d in images],
                                   map_sizes=[None if d.display is None else d.display.shape[:2] for d in images])


def _check_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """The service's limits, the defaults filled in, every one checked (BundleError naming the first bad one)."""
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise BundleError(f"unknown service limit {unknown[0]!r}")
    out = {**LIMITS, **limits}
    for key, value in out.items():
        whole = key not in ("max_wait_ms", "body_timeout_s")
        low = {"max_overlay_side": 16, "max_wait_ms": 0}.get(key, 1 if whole else 0)
        ok = isinstance(value, (int, np.integer) if whole else (int, float, np.integer, np.floating))
        ok = ok and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > 0 if key == "body_timeout_s" else value >= low)
        if not ok:
            bound = "> 0" if key == "body_timeout_s" else f">= {low}"
            raise BundleError(f"{key} must be {'an integer' if whole else 'a finite number'} {bound}, got {value!r}")
    return out


def create_app(bundles: dict[str, Predictor], default: str | None = None, window: int = DEFAULT_WINDOW,
               min_count: int | None = None, **limits: Any) -> FastAPI:
    """A FastAPI app serving `bundles` (name -> predictor) as the module docstring says."""
    if not bundles:
        raise BundleError("no bundle to serve")
    for name in bundles:
        check_name(name)
    if default is None and len(bundles) == 1:
        default = next(iter(bundles))
    if default is not None and default not in bundles:
        raise BundleError(f"default bundle {default!r} is not among those served ({', '.join(bundles)})")
    lim = _check_limits(limits)
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="padim-run-infer")
    decode_pool = ThreadPoolExecutor(max_workers=lim["decode_workers"], thread_name_prefix="padim-run-decode")
    models = {name: Served(name, p, Batcher(lambda imgs, p=p: _run_batch(p, imgs), executor=model_thread,
                                            max_batch=lim["max_batch"], max_wait_ms=lim["max_wait_ms"]),
                           DriftMonitor(p.calibration, window, min(window, 50) if min_count is None else min_count),
                           ModelStats(), describe(p))
              for name, p in bundles.items()}
    state: dict[str, Any] = {"pending": 0, "served": 0, "errors": Counter(), "uploading": Counter()}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for s in models.values():
            s.batcher.start()
        yield
        for s in models.values():
            await s.batcher.close()
        model_thread.shutdown(wait=False)
        decode_pool.shutdown(wait=False)

    app = FastAPI(title="padim-runtime", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.models, app.state.requests = models, state

    @app.exception_handler(StarletteHTTPException)
    async def counted(request: Request, exc: StarletteHTTPException) -> Response:
        """Every error answer counted by status code for /metrics."""
        state["errors"][exc.status_code] += 1
        return await http_exception_handler(request, exc)

    def pick(name: str | None) -> Served:
        """The bundle of a name (None: the default), or a one-line 404."""
        if name is None:
            if default is None:
                raise fail(404, f"several bundles are served ({', '.join(models)}): POST /models/NAME/predict, "
                                "or start the service with --default NAME")
            name = default
        if name not in models:
            raise fail(404, f"no bundle named {name!r}: this service has {', '.join(models)}")
        return models[name]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Bundles, limits and load (the default bundle's description at the top level, as `padim serve`)."""
        top = models[default].info if default is not None else {}
        return {"status": "ok", **top, "version": __version__, "default": default,
                "models": {n: s.info for n, s in models.items()},
                "limits": {k: lim[k] for k in LIMITS if k != "decode_workers"}, "drift_window": window,
                "in_flight": state["pending"], "served": state["served"]}

    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        """The bundles served and the default one."""
        return {"default": default, "models": [{"name": n, **s.info} for n, s in models.items()]}

    @app.get("/drift")
    async def all_drift() -> dict[str, Any]:
        """Every bundle's drift window."""
        return {n: s.drift.report() for n, s in models.items()}

    @app.get("/models/{name}/drift")
    async def drift(name: str) -> dict[str, Any]:
        """One bundle's drift window."""
        return pick(name).drift.report()

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition."""
        text = exposition({n: s.stats for n, s in models.items()}, {n: s.drift.report() for n, s in models.items()},
                          {n: {"backbone": s.info["model"], "engine": s.info["engine"]} for n, s in models.items()},
                          state["errors"], state["pending"])
        return Response(text, media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        """Drop an image, see the overlay, the verdict and the drift panel."""
        return HTMLResponse(render_page({n: s.info for n, s in models.items()}, default),
                            headers=page_headers(inline=False))

    @app.get("/assets/{asset}")
    async def assets(asset: str) -> Response:
        """The page's stylesheet and script."""
        if asset not in ASSETS:
            raise fail(404, f"no asset {asset!r}")
        return Response(template(asset), media_type=ASSETS[asset], headers={"X-Content-Type-Options": "nosniff",
                                                                             "Cache-Control": "no-cache"})

    async def answer(request: Request, served: Served) -> Response:
        """Receive, decode, score and answer one upload."""
        t0 = time.perf_counter()
        overlay, as_png = _query(request)
        client = client_address(request)
        uploading: Counter[str] = state["uploading"]
        refusal = None
        if uploading[client] >= lim["max_uploads_per_client"]:
            refusal = fail(429, f"too many uploads at once from {client} (limit {lim['max_uploads_per_client']}), "
                                "retry shortly", **BUSY)
        elif state["pending"] >= lim["max_queue"]:
            refusal = fail(503, f"busy: {state['pending']} requests in progress (limit {lim['max_queue']}), "
                                "retry shortly", **BUSY)
        if refusal is not None:
            await drain(request)
            raise refusal
        state["pending"] += 1
        try:
            uploading[client] += 1
            try:
                data, name = await read_upload_within(request, lim["max_upload_bytes"], lim["body_timeout_s"])
            except ClientDisconnect:
                log.warning("%s disconnected during the upload to %s: request dropped", client, request.url.path)
                raise fail(400, "client disconnected during the upload") from None
            finally:
                uploading[client] -= 1
                if uploading[client] <= 0:
                    del uploading[client]
            return await _score(served, data, name, overlay or as_png, as_png, overlay, t0)
        finally:
            state["pending"] -= 1

    async def _score(served: Served, data: bytes, name: str, want_png: bool, as_png: bool, overlay: bool,
                     t0: float) -> Response:
        """Decode and score an upload, record it, and build the answer."""
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(decode_pool, decode_upload, data, name, lim["max_pixels"],
                                           tuple(served.predictor.spec["image_size"]),
                                           lim["max_overlay_side"] if want_png else None)
        try:
            result, batch = await served.batcher.submit(image)
        except BundleError as exc:
            raise fail(422, f"{name}: {exc}") from None
        timing = {"decode": image.decode_ms, "queue": batch.queue_ms, "inference": batch.inference_ms}
        png = None
        if want_png:
            t1 = time.perf_counter()
            vmin, vmax = served.scale()
            cal = served.predictor.calibration
            png = await loop.run_in_executor(decode_pool, overlay_png, image.display, result.anomaly_map, vmin, vmax,
                                             None if cal is None else float(cal["pixel_threshold"]))
            timing["overlay"] = (time.perf_counter() - t1) * 1000
        timing["total"] = (time.perf_counter() - t0) * 1000
        blank, unlike = served.flags(result.reason)
        served.drift.add(result.score, blank or unlike)
        served.stats.record(result.defective, blank, unlike, timing["total"] / 1000)
        state["served"] += 1
        if as_png:
            verdict = "unknown" if result.defective is None else str(result.defective).lower()
            return Response(png, media_type="image/png", headers={
                "X-Padim-Score": f"{result.score:.6g}", "X-Padim-Defective": verdict,
                "X-Padim-Timing-Ms": f"{timing['total']:.1f}"})
        return JSONResponse(_body(served, result, image, batch.batch_size, timing, png if overlay else None))

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """Score one image with the default bundle."""
        return await answer(request, pick(None))

    @app.post("/models/{name}/predict")
    async def predict_with(name: str, request: Request) -> Response:
        """Score one image with the bundle of that name."""
        return await answer(request, pick(name))

    return app


def _query(request: Request) -> tuple[bool, bool]:
    """(overlay, as_png) from ?overlay=BOOL and ?format=json|png; a one-line 422 otherwise."""
    flag = request.query_params.get("overlay", "false").strip().lower()
    if flag not in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        raise fail(422, f"overlay must be true or false, got {flag!r}")
    fmt = request.query_params.get("format", "json").strip().lower()
    if fmt not in ("json", "png"):
        raise fail(422, f"format must be 'json' or 'png', got {fmt!r}")
    return flag in ("true", "1", "yes", "on"), fmt == "png"


def _body(served: Served, result: Any, image: Decoded, batch_size: int, timing: dict[str, float],
          png: bytes | None) -> dict[str, Any]:
    """The JSON answer, field for field as `padim serve`'s."""
    cal = served.predictor.calibration
    body: dict[str, Any] = {
        "image": {"name": image.name, "width": image.width, "height": image.height},
        "score": result.score, "normalized_score": result.normalized_score, "defective": result.defective,
        "reason": result.reason, "frame_score": result.frame_score,
        "image_threshold": None if cal is None else float(cal["image_threshold"]),
        "pixel_threshold": None if cal is None else float(cal["pixel_threshold"]),
        "threshold_source": served.info["threshold_source"], "batch_size": batch_size,
        "timing_ms": {k: round(v, 3) for k, v in timing.items()},
    }
    if png is not None:
        body["overlay_png_base64"] = base64.b64encode(png).decode("ascii")
    return body


def listen(host: str, port: int, error: type[Exception] = BundleError) -> socket.socket:
    """A listening socket, or a one-line `error` (address in use, unknown host...)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except (OSError, OverflowError) as exc:
        raise error(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None


def serve(bundles: dict[str, Predictor], host: str = "127.0.0.1", port: int = 8000, access_log: bool = True,
          **options: Any) -> None:
    """Run the service with uvicorn until interrupted; `options` go to create_app."""
    import uvicorn

    app = create_app(bundles, **options)
    sock = listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(f"{n} ({s.info['model']}, {'calibrated' if s.info['calibrated'] else 'not calibrated'})"
                      for n, s in app.state.models.items())
    print(f"padim-run serve: {names}; listening on http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C to stop)",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=10))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
