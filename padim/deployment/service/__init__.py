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

Memory stays bounded whatever the clients do (the limits are ``Limits``, checked by ``create_app``):
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

Modules: ``app`` (the routes, ``create_app``, ``serve``), ``limits``, ``uploads`` (decoding uploads) and
``page`` (the web page). The generic parts are padim-runtime's, which ``padim-run serve`` uses too:
``padim_runtime.batching`` (the micro-batcher), ``padim_runtime.uploads`` (reading uploads) and
``padim_runtime.page`` (the page, from its package data ``templates/page.html``, ``page.css`` and ``page.js``).
"""

try:  # the optional `serve` extra
    import fastapi  # noqa: F401
    import starlette  # noqa: F401

    try:
        import python_multipart  # noqa: F401 - Starlette needs it to parse uploads
    except ImportError:  # python-multipart < 0.0.13
        import multipart  # type: ignore[import-not-found]  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"padim serve needs FastAPI, uvicorn and python-multipart: pip install 'torch-padim[serve]' "
        f"({_exc.name} is missing)"
    ) from _exc

from padim_runtime.batching import BatchInfo, Batcher
from padim_runtime.uploads import read_upload, read_upload_within

from padim.deployment.service.app import create_app, describe_model, listen, render_overlay, running_in_thread, serve
from padim.deployment.service.limits import LIMIT_CONSTRAINTS, Limits
from padim.deployment.service.page import VERDICT_COLOURS, render_page
from padim.deployment.service.uploads import DecodedImage, decode_image

__all__ = ["LIMIT_CONSTRAINTS", "VERDICT_COLOURS", "BatchInfo", "Batcher", "DecodedImage", "Limits", "create_app",
           "decode_image", "describe_model", "listen", "read_upload", "read_upload_within", "render_overlay",
           "render_page", "running_in_thread", "serve"]
