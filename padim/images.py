"""Image files in, RGB tensors out: finding image files, opening them safely, decoding and colour conversion.

Every image the library reads (files, masks, uploads, in-memory arrays) comes through here: only plain
raster formats are opened, the pixel count is checked from the header before decoding, files are
turned upright by their EXIF orientation, and any mode (8/16-bit, float, palette, alpha, CMYK) becomes
a (3, H, W) float32 tensor in [0, 1].
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from padim.errors import ImageTooLarge, InputError, PadimError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The only formats decoded anywhere (files, masks, uploads): plain raster formats. Pillow knows many more,
# some of which run external programs (EPS/PostScript runs Ghostscript) or exotic parsers.
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
# Largest image decoded by default (the header is checked first): 40 MP is about 0.5 GB as float32 RGB.
DEFAULT_MAX_PIXELS = 40_000_000
_OPEN_LOCK = threading.Lock()  # Pillow's header and EXIF parsing, with warnings caught: one thread at a time

Size = tuple[int, int]


def is_hidden(path: Path) -> bool:
    """A dot-file or dot-folder: editor and OS droppings such as .thumb.png, or macOS AppleDouble ._x.png."""
    return path.name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """Visible image files directly inside a folder, unsorted; one warning says how many hidden ones were skipped."""
    files, hidden = [], 0
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if is_hidden(p):
                hidden += 1
            else:
                files.append(p)
    if hidden:
        warnings.warn(f"{folder}: skipped {hidden} hidden image file(s) (names starting with '.', "
                      f"e.g. macOS ._* files)", stacklevel=2)
    return files


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Visible image files directly inside a folder, sorted by name (hidden and AppleDouble files skipped)."""
    path = Path(folder)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder")
    files = sorted(image_files(path))
    if not files:
        raise InputError(f"{path}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def check_max_pixels(max_pixels: int | None) -> int | None:
    """A pixel limit as given (a positive int), or None for no limit of padim's own."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    return int(max_pixels)


@contextmanager
def decode_errors(name: str) -> Iterator[None]:
    """Turn what Pillow raises on a bad or hostile file into a one-line PadimError naming it."""
    try:
        yield
    except PadimError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a readable image (unsupported format or corrupt; "
                         f"accepted: {', '.join(RASTER_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{name}: {exc} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None


@contextmanager
def pillow_warnings(name: str, warn: bool = True) -> Iterator[None]:
    """Run Pillow code one thread at a time, what it warns about (e.g. corrupt EXIF) as one warning naming the file.

    Its decompression-bomb warning is dropped: the caller's max_pixels decides (its hard limit still raises).
    """
    with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield
    complaints = []
    for w in caught:
        if "PIL" in w.filename:
            complaints.append(" ".join(str(w.message).split()))
        else:  # another thread's warning, caught in passing: given back as it was
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if complaints and warn:
        warnings.warn(f"{name}: {'; '.join(dict.fromkeys(complaints))}", stacklevel=3)


def open_image(source: Any, name: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               warn: bool = True) -> Image.Image:
    """Open a path or binary file of an allowed raster format (header only) and check its pixel count."""
    max_pixels = check_max_pixels(max_pixels)
    with decode_errors(name), pillow_warnings(name, warn):
        img = Image.open(source, formats=RASTER_FORMATS)
    width, height = img.size  # from the header: nothing decoded yet
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageTooLarge(f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                            f"{max_pixels:,} pixels (max_pixels, --max-pixels)")
    return img


def read_exif(img: Image.Image, name: str, warn: bool = True) -> Image.Exif:
    """An opened image's EXIF block, parsed once and kept by the image (exif_transpose reuses it)."""
    with decode_errors(name), pillow_warnings(name, warn):
        return img.getexif()


def oriented_size(img: Image.Image, name: str) -> Size:
    """(height, width) of an opened image once turned upright by its EXIF orientation (from the header)."""
    width, height = img.size
    orientation = read_exif(img, name).get(ExifTags.Base.Orientation, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def load_upright(img: Image.Image, name: str, warn: bool = True) -> Image.Image:
    """Decode the first frame of an opened image and turn it upright by its EXIF orientation, in place.

    Only the first frame or page is used; with warn, a file holding more (or corrupt EXIF) says so (a warning).
    """
    with decode_errors(name):
        frames = int(getattr(img, "n_frames", 1))
        if frames > 1 and warn:
            warnings.warn(f"{name}: holds {frames} frames or pages; only the first is used", stacklevel=2)
        img.load()
        read_exif(img, name, warn)
        ImageOps.exif_transpose(img, in_place=True)
    return img


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               warn: bool = True) -> torch.Tensor:
    """Decode an image file into a (3, H, W) float32 tensor in [0, 1], upright by its EXIF orientation."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    with open_image(path, str(path), max_pixels=max_pixels, warn=warn) as img:
        load_upright(img, str(path), warn)
        with decode_errors(str(path)):
            return pil_to_tensor(img, str(path))


def pil_to_tensor(img: Image.Image, name: str) -> torch.Tensor:
    """Convert any PIL mode (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F) to (3, H, W) float in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (and PNG-16 read as 32-bit 'I'): PIL's convert("RGB") would clip at 255.
        pixels = np.asarray(img)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise InputError(f"{name}: 32-bit integer pixels outside the 16-bit range are not supported")
        return array_to_tensor(pixels.astype(np.uint16), name)
    if img.mode == "F":
        return array_to_tensor(np.asarray(img, dtype=np.float32), name)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")  # drops alpha, converts CMYK/YCbCr/LA/1
    return array_to_tensor(np.asarray(img), name)


def array_to_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    """Convert an HxW or HxWxC (C in 1, 3, 4) numpy image to (3, H, W) float32 in [0, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(
            f"{name}: expected an HxW or HxWxC image with 1, 3 or 4 channels, got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name}: empty image (shape {tuple(array.shape)})")
    rgb = _unit_range(array[:, :, :3], name)  # a 4th channel is alpha: it carries no appearance
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def tensor_to_tensor(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Convert an HxW or CxHxW (C in 1, 3, 4) torch image to (3, H, W) float32 in [0, 1]."""
    t = tensor.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()  # numpy has no bfloat16
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise InputError(
            f"{name}: expected an HxW or CxHxW tensor with 1, 3 or 4 channels, got shape {tuple(tensor.shape)}"
        )
    return array_to_tensor(t.permute(1, 2, 0).numpy(), name)


def _unit_range(pixels: np.ndarray, name: str) -> np.ndarray:
    """Scale 8-bit, 16-bit, bool or [0, 1]-float pixels to float32 in [0, 1]."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    if pixels.dtype == np.uint16:
        return (pixels.astype(np.float64) / 65535.0).astype(np.float32)
    if pixels.dtype.kind in "iu":
        raise InputError(f"{name}: integer pixels must be uint8 or uint16, got {pixels.dtype}")
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if pixels.dtype.kind == "f":
        out = pixels.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError(f"{name}: image contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise InputError(f"{name}: float pixels must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]")
        return np.clip(out, 0.0, 1.0)
    raise InputError(f"{name}: unsupported pixel type {pixels.dtype}")


def image_shape(path: str | os.PathLike) -> Size:
    """(height, width) of an image file once upright (EXIF orientation), read from its header without decoding."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    with open_image(path, str(path), max_pixels=None) as img:
        return oriented_size(img, str(path))
