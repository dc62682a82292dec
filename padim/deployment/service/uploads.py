"""Decoding an upload into what the model and overlay need (padim_runtime.uploads reads it off the request)."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import torch
from padim_runtime.uploads import MiB, fail

from padim.data import resize
from padim.images import decode_errors, load_upright, open_image, pil_to_tensor
from padim.errors import ImageTooLarge, PadimError

DEFAULT_MAX_UPLOAD = 20 * MiB
MAX_OVERLAY_SIDE = 1024  # overlays of larger images are drawn at this longest side


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
        raise fail(422, f"{name}: empty file")
    try:
        # The library's one decoding path: allow-listed formats, pixel count from the header, EXIF orientation.
        with open_image(io.BytesIO(data), name, max_pixels=max_pixels, warn=False) as img:
            load_upright(img, name, warn=False)  # a warning per upload would flood the log
            with decode_errors(name):
                return pil_to_tensor(img, name)
    except ImageTooLarge as exc:
        raise fail(413, str(exc)) from None
    except PadimError as exc:
        raise fail(422, str(exc)) from None
    except MemoryError:
        raise fail(413, f"{name}: image too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile or broken files
        raise fail(422, f"{name}: corrupt or truncated image ({exc})") from None


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
