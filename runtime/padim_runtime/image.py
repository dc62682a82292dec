"""Images in, normalised arrays out: the full package's decoding and preprocessing, in numpy and Pillow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from padim_runtime.bundle import BundleError
from padim_runtime.resize import resize

RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm")
MAX_PIXELS = 40_000_000


def list_images(folder: Path) -> list[Path]:
    """Image files directly in a folder, sorted, hidden and AppleDouble files skipped."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BundleError(f"{folder}: folder has no images")
    return files


def decode(source: Any, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A file path, PIL image or HxW[xC] uint8 array as a (3, H, W) float32 image in [0, 1], upright (EXIF)."""
    if isinstance(source, np.ndarray):
        return _to_unit_rgb(source, name)
    if isinstance(source, Image.Image):
        return from_pil(ImageOps.exif_transpose(source), name)
    path = Path(source)
    if not path.is_file() or path.stat().st_size == 0:
        raise BundleError(f"{path}: {'empty file' if path.is_file() else 'no such image file'}")
    try:
        with Image.open(path, formats=RASTER_FORMATS) as img:
            if img.width * img.height > max_pixels:
                raise BundleError(f"{path}: {img.width}x{img.height} pixels exceed the limit of {max_pixels}")
            img.load()
            return from_pil(ImageOps.exif_transpose(img), str(path))
    except UnidentifiedImageError:
        raise BundleError(f"{path}: not a readable raster image (unsupported format or corrupt)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{path}: corrupt or truncated image ({exc})") from None


def from_pil(img: Image.Image, name: str) -> np.ndarray:
    """Any PIL mode as (3, H, W) float32 in [0, 1], as padim.images.pil_to_tensor converts it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _to_unit_rgb(np.asarray(img).astype(np.uint16), name)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    return _to_unit_rgb(np.asarray(img), name)


def _to_unit_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """HxW or HxWxC (1, 3, 4) uint8/uint16 pixels as (3, H, W) float32 in [0, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise BundleError(f"{name}: expected an HxW or HxWxC image with 1, 3 or 4 channels, got {array.shape}")
    if array.dtype == np.uint8:
        rgb = array[:, :, :3].astype(np.float32) / np.float32(255.0)
    elif array.dtype == np.uint16:
        rgb = (array[:, :, :3].astype(np.float64) / 65535.0).astype(np.float32)
    else:
        raise BundleError(f"{name}: pixels must be uint8 or uint16, got {array.dtype}")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def preprocess(rgb: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Resize (bicubic), centre crop and normalise as the model's Preprocess does."""
    (h, w), crop = spec["image_size"], spec["crop_size"]
    x = np.clip(resize(rgb, (h, w)), 0.0, 1.0)
    if crop:
        ch, cw = crop
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        x = x[:, top : top + ch, left : left + cw]
    mean = np.asarray(spec["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def to_original(amap: np.ndarray, spec: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """A map on the model's grid at an original image's size, NaN where the crop never looked."""
    (h, w), crop = spec["image_size"], spec["crop_size"]
    if crop:
        ch, cw = crop
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        canvas = np.full((h, w), np.nan, np.float32)
        canvas[top : top + ch, left : left + cw] = amap
        amap = canvas
    return resize(amap[None].astype(np.float32), size)[0]


def describe(source: Any) -> str:
    """The name an input is reported under."""
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
