"""Reading an upload off a request within its limits, and decoding it into what the model and overlay need."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from padim.data import resize
from padim.images import RASTER_FORMATS, decode_errors, load_upright, open_image, pil_to_tensor
from padim.errors import ImageTooLarge, PadimError

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD = 20 * MiB
MULTIPART_SLACK = 64 * 1024  # room for the multipart boundaries and part headers around the file
MAX_OVERLAY_SIDE = 1024  # overlays of larger images are drawn at this longest side
SAFE_FORMATS = RASTER_FORMATS  # formats opened from uploads: the library's raster allow-list (padim.data)
HOW_TO_UPLOAD = ("send multipart/form-data with the image in a field named 'file', or the image bytes "
                 "with Content-Type image/* or application/octet-stream")


def http_error(status: int, message: str, **headers: str) -> HTTPException:
    """An HTTP error with a one-line message."""
    return HTTPException(status_code=status, detail=" ".join(message.split()), headers=headers or None)


def size_text(n_bytes: float) -> str:
    """Bytes for people: '20 MiB', '512 KiB', '900 bytes'."""
    if n_bytes >= MiB:
        return f"{n_bytes / MiB:.3g} MiB"
    if n_bytes >= 1024:
        return f"{n_bytes / 1024:.3g} KiB"
    return f"{int(n_bytes)} bytes"


def clean_name(name: str | None) -> str:
    """An upload's file name, safe to put in a one-line message."""
    if not name:
        return "upload"
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c if c.isprintable() else "?" for c in name)[:120]
    return name or "upload"


def client_address(request: Request) -> str:
    """The client's address (the proxy's, unless uvicorn trusts its forwarded headers)."""
    return request.client.host if request.client else "unknown"


# --------------------------------------------------------------------------------------- decoding
@dataclass
class DecodedImage:
    """An uploaded image, shrunk straight away to what the model and the overlay need.

    Attributes
    ----------
    name : str
        The upload's cleaned file name.
    width, height : int
        Its upright size in pixels.
    model_input : torch.Tensor
        (3, H, W) in [0, 1] at the model's resize size.
    display : numpy.ndarray or None
        (h, w, 3) uint8 for the overlay, longest side at most the overlay side; None when no overlay is wanted.
    decode_ms : float
        How long checking and decoding took.
    """

    name: str
    width: int
    height: int
    model_input: torch.Tensor
    display: np.ndarray | None
    decode_ms: float


def _decode_rgb(data: bytes, name: str, max_pixels: int) -> torch.Tensor:
    """The upload as an upright (3, h, w) tensor in [0, 1]; HTTPException 413/422 when it will not do."""
    if not data:
        raise http_error(422, f"{name}: empty file")
    try:
        # The library's one decoding path: allow-listed formats, pixel count from the header, EXIF orientation.
        with open_image(io.BytesIO(data), name, max_pixels=max_pixels, warn=False) as img:
            load_upright(img, name, warn=False)  # a warning per upload would flood the log
            with decode_errors(name):
                return pil_to_tensor(img, name)
    except ImageTooLarge as exc:
        raise http_error(413, str(exc)) from None
    except PadimError as exc:
        raise http_error(422, str(exc)) from None
    except MemoryError:
        raise http_error(413, f"{name}: image too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile or broken files
        raise http_error(422, f"{name}: corrupt or truncated image ({exc})") from None


def _display_copy(rgb: torch.Tensor, side: int) -> np.ndarray:
    """An RGB uint8 copy whose longest side is at most `side`."""
    height, width = rgb.shape[1:]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = resize(rgb[None], size).clamp_(0.0, 1.0)[0]
    return (small.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def decode_image(data: bytes, name: str, max_pixels: int, image_size: tuple[int, int], *,
                 overlay_side: int | None) -> DecodedImage:
    """Check and decode an upload (runs in a worker thread); HTTPException 413/422 when it will not do."""
    t0 = time.perf_counter()
    rgb = _decode_rgb(data, name, max_pixels)
    # Exactly the first step of Preprocess.resized: the model repeating it on this tensor is the identity.
    model_input = resize(rgb[None], image_size).clamp_(0.0, 1.0)[0].contiguous()
    display = _display_copy(rgb, overlay_side) if overlay_side else None
    height, width = rgb.shape[1:]
    return DecodedImage(name, int(width), int(height), model_input, display, (time.perf_counter() - t0) * 1000)


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
        raise http_error(413, too_large) from None
    except MultiPartException as exc:
        raise http_error(400, f"malformed multipart upload: {exc.message}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise http_error(422, f"no image uploaded: {HOW_TO_UPLOAD}")
        name = clean_name(files[0].filename)
        part_type = _media_type(files[0].content_type, "application/octet-stream")
        if not _is_image_type(part_type):
            raise http_error(415, f"{name}: content type {part_type!r} is not an image; "
                                  "upload image/* (PNG, JPEG, BMP, TIFF, WebP) or application/octet-stream")
        data = await files[0].read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise http_error(413, f"{name}: {size_text(len(data))} {too_large.replace('upload ', '')}")
    return data, name


async def _read_raw(request: Request, media: str, limit: int, too_large: str) -> tuple[bytes, str]:
    """The body itself as the image, named by the X-Filename header."""
    if media == "application/x-www-form-urlencoded":  # a form, but one that cannot carry a file
        raise http_error(422, f"no image uploaded (a url-encoded form carries no file): {HOW_TO_UPLOAD}")
    if media and not _is_image_type(media):
        raise http_error(415, f"content type {media!r} is not an image: {HOW_TO_UPLOAD}")
    chunks = []
    try:
        async for chunk in _capped(request.stream(), limit):
            chunks.append(chunk)
    except _TooLarge:
        raise http_error(413, too_large) from None
    data = b"".join(chunks)
    if not media:
        raise http_error(422 if not data else 415,
                         ("no image uploaded: " if not data else "missing Content-Type: ") + HOW_TO_UPLOAD)
    return data, clean_name(request.headers.get("x-filename"))


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The uploaded image's bytes and name; 413/415/422/400 HTTPExceptions for bad requests."""
    media = _media_type(request.headers.get("content-type"))
    multipart = media == "multipart/form-data"
    limit = max_bytes + (MULTIPART_SLACK if multipart else 0)
    too_large = f"upload exceeds the limit of {size_text(max_bytes)}"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise http_error(413, f"{too_large} (Content-Length {size_text(int(declared))})")
    if multipart:
        return await _read_multipart(request, max_bytes, limit, too_large)
    return await _read_raw(request, media, limit, too_large)


async def read_upload_within(request: Request, max_bytes: int, timeout_s: float) -> tuple[bytes, str]:
    """`read_upload`, answered 408 (and the connection closed) when the body is not in after `timeout_s`."""
    try:
        return await asyncio.wait_for(read_upload(request, max_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise http_error(408, f"upload not complete after {timeout_s:g} s (the server's body timeout)",
                         Connection="close") from None
