"""Uploads: the request body read within limits (for `padim serve` and `padim-run serve`), the image decoded.

Bad requests become one-line HTTP errors with the same status codes in both services: 400 malformed multipart,
408 body not in within the timeout, 413 too many bytes or pixels, 415 a content type that is not an image,
422 no image or one that does not decode. The reading is shared; `padim serve` decodes with torch itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException, Request
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from padim_runtime.bundle import BundleError
from padim_runtime.image import RASTER_FORMATS, from_pil
from padim_runtime.resize import resize

MiB = 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # room for the multipart boundaries and part headers around the file
BUSY = {"Retry-After": "1", "Connection": "close"}  # the headers of 429 and 503 answers: retry soon, anew
HOW_TO_UPLOAD = ("send multipart/form-data with the image in a field named 'file', or the image bytes "
                 "with Content-Type image/* or application/octet-stream")


# A refused request's body is read for at most this much, this long, before the answer: closing a socket
# with unread data resets the connection, and the client may then never see the 429/503 it was sent.
DRAIN_BYTES = 1 << 20
DRAIN_S = 1.0


async def drain(request: Request, limit: int = DRAIN_BYTES, timeout_s: float = DRAIN_S) -> None:
    """Read and drop up to `limit` bytes of a refused request's body, for at most `timeout_s` seconds."""

    async def consume() -> None:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen >= limit:
                return

    with contextlib.suppress(Exception):  # a client gone or too slow: the answer is sent anyway
        await asyncio.wait_for(consume(), timeout_s)


def fail(status: int, message: str, **headers: str) -> HTTPException:
    """An HTTP error whose detail is one line."""
    return HTTPException(status_code=status, detail=" ".join(message.split()), headers=headers or None)


def size_text(n_bytes: float) -> str:
    """Bytes for people: '20 MiB', '512 KiB', '900 bytes'."""
    if n_bytes >= MiB:
        return f"{n_bytes / MiB:.3g} MiB"
    if n_bytes >= 1024:
        return f"{n_bytes / 1024:.3g} KiB"
    return f"{int(n_bytes)} bytes"


def clean_name(name: str | None) -> str:
    """An upload's file name without folders or unprintable characters, at most 120 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c if c.isprintable() else "?" for c in base)[:120] or "upload"


def client_address(request: Request) -> str:
    """The client's address (the proxy's, unless uvicorn trusts its forwarded headers)."""
    return request.client.host if request.client else "unknown"


# --------------------------------------------------------------------------------------- reading uploads
class _TooLarge(Exception):
    """The body grew past its limit."""


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The request body, abandoned as soon as it exceeds `limit` bytes."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        yield chunk


def _is_image_type(media: str) -> bool:
    """image/* or application/octet-stream."""
    return media.startswith("image/") or media == "application/octet-stream"


def _media_type(content_type: str | None, default: str = "") -> str:
    """A Content-Type without its parameters, lower-case."""
    return (content_type or default).split(";")[0].strip().lower()


async def _read_multipart(request: Request, max_bytes: int, limit: int, too_large: str) -> tuple[bytes, str]:
    """The first file of a multipart/form-data body."""
    parser = MultiPartParser(request.headers, _capped(request.stream(), limit), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except _TooLarge:
        raise fail(413, too_large) from None
    except MultiPartException as exc:
        raise fail(400, f"malformed multipart upload: {exc.message}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise fail(422, f"no image uploaded: {HOW_TO_UPLOAD}")
        name = clean_name(files[0].filename)
        part_type = _media_type(files[0].content_type, "application/octet-stream")
        if not _is_image_type(part_type):
            raise fail(415, f"{name}: content type {part_type!r} is not an image; "
                            "upload image/* (PNG, JPEG, BMP, TIFF, WebP) or application/octet-stream")
        data = await files[0].read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise fail(413, f"{name}: {size_text(len(data))} {too_large.replace('upload ', '')}")
    return data, name


async def _read_raw(request: Request, media: str, limit: int, too_large: str) -> tuple[bytes, str]:
    """The body itself as the image, named by the X-Filename header."""
    if media == "application/x-www-form-urlencoded":  # a form, but one that cannot carry a file
        raise fail(422, f"no image uploaded (a url-encoded form carries no file): {HOW_TO_UPLOAD}")
    if media and not _is_image_type(media):
        raise fail(415, f"content type {media!r} is not an image: {HOW_TO_UPLOAD}")
    try:
        data = b"".join([chunk async for chunk in _capped(request.stream(), limit)])
    except _TooLarge:
        raise fail(413, too_large) from None
    if not media:
        raise fail(415 if data else 422, ("missing Content-Type: " if data else "no image uploaded: ") + HOW_TO_UPLOAD)
    return data, clean_name(request.headers.get("x-filename"))


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The uploaded image's bytes and name: a multipart field, or the raw body with an image content type.

    Bad requests are 400 (malformed multipart), 413 (past `max_bytes`), 415 (not an image type) or 422 (no image).
    """
    media = _media_type(request.headers.get("content-type"))
    multipart = media == "multipart/form-data"
    limit = max_bytes + (MULTIPART_SLACK if multipart else 0)
    too_large = f"upload exceeds the limit of {size_text(max_bytes)}"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise fail(413, f"{too_large} (Content-Length {size_text(int(declared))})")
    if multipart:
        return await _read_multipart(request, max_bytes, limit, too_large)
    return await _read_raw(request, media, limit, too_large)


async def read_upload_within(request: Request, max_bytes: int, timeout_s: float) -> tuple[bytes, str]:
    """`read_upload`, or 408 (and the connection closed) when the body is not in after `timeout_s`."""
    try:
        return await asyncio.wait_for(read_upload(request, max_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise fail(408, f"upload not complete after {timeout_s:g} s (the server's body timeout)",
                   Connection="close") from None


# --------------------------------------------------------------------------------------- decoding
@dataclass
class Decoded:
    """An upload decoded and shrunk at once to the model's resize size (and a display copy for the overlay)."""

    name: str
    width: int
    height: int
    model_input: np.ndarray  # (3, H, W) float32 in [0, 1] at the bundle's image_size
    display: np.ndarray | None  # (h, w, 3) uint8, longest side <= the overlay side
    decode_ms: float


def _open(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """The upright (3, H, W) float32 pixels of an upload, its pixel count checked from the header first."""
    if not data:
        raise fail(422, f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data), formats=RASTER_FORMATS) as img:
            if img.width * img.height > max_pixels:
                raise fail(413, f"{name}: {img.width}x{img.height} = {img.width * img.height:,} pixels exceeds "
                                f"the limit of {max_pixels:,} pixels (max_pixels, --max-pixels)")
            img.load()
            return from_pil(ImageOps.exif_transpose(img), name)
    except UnidentifiedImageError:
        raise fail(422, f"{name}: not a readable image (unsupported format or corrupt; accepted: "
                        f"{', '.join(RASTER_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise fail(413, f"{name}: {exc} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS)") from None
    except BundleError as exc:
        raise fail(422, str(exc)) from None
    except MemoryError:
        raise fail(413, f"{name}: image too large to decode") from None
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile or broken files
        raise fail(422, f"{name}: corrupt or truncated image ({' '.join(str(exc).split())})") from None


def decode_upload(data: bytes, name: str, max_pixels: int, image_size: tuple[int, int],
                  overlay_side: int | None) -> Decoded:
    """Check and decode an upload (in a worker thread); 413/422 HTTPExceptions when it will not do.

    The shrink to image_size is the first step of the bundle's preprocessing (clipped to [0, 1] as it is),
    so the predictor repeating it is the identity: scores equal `Predictor.predict` on the same file.
    """
    t0 = time.perf_counter()
    rgb = _open(data, name, max_pixels)
    height, width = rgb.shape[1:]
    model_input = np.clip(resize(rgb, tuple(image_size)), 0.0, 1.0)
    display = None
    if overlay_side:
        scale = min(1.0, overlay_side / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = np.clip(resize(rgb, size), 0.0, 1.0)
        display = np.ascontiguousarray((small.transpose(1, 2, 0) * 255).round().astype(np.uint8))
    return Decoded(name, width, height, model_input, display, (time.perf_counter() - t0) * 1000)
