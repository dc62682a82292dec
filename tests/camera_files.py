"""Files a camera pipeline (or a hostile folder) really holds, written with Pillow into a test's tmp_path."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def postscript_as_png(path: Path) -> Path:
    """A real EPS file (Pillow's EPS writer) under a .png name: decoding it would run Ghostscript."""
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format="EPS")
    assert path.read_bytes().startswith(b"%!PS-Adobe-3.0")
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels, with almost no pixel data (a 'bomb')."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def frames(n: int, size: int = 16) -> list[Image.Image]:
    """n RGB frames of different flat colours."""
    return [Image.new("RGB", (size, size), (40 * i, 255 - 40 * i, 90)) for i in range(n)]


def multi_frame(path: Path, n: int = 3) -> Path:
    """An animated GIF or a multi-page TIFF (by the suffix) of n frames."""
    first, *rest = frames(n)
    first.save(path, save_all=True, append_images=rest)
    return path


def stored_pixels(height: int = 24, width: int = 40) -> np.ndarray:
    """A landscape RGB image with big flat blocks (JPEG keeps them), whose rotation is unambiguous."""
    a = np.zeros((height, width, 3), np.uint8)
    a[: height // 2, : width // 2] = (255, 0, 0)
    a[: height // 2, width // 2 :] = (0, 255, 0)
    a[height // 2 :, : width // 2] = (0, 0, 255)
    a[height // 2 :, width // 2 :] = (255, 255, 255)
    return a


def rotated_jpeg(path: Path, orientation: int = 6, pixels: np.ndarray | None = None) -> Path:
    """A JPEG as a camera held upright writes it: landscape sensor pixels plus an EXIF Orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored_pixels() if pixels is None else pixels).save(path, format="JPEG", quality=95, exif=exif)
    return path


def decoded_as_stored(path: Path) -> np.ndarray:
    """The JPEG's pixels as stored, without applying its orientation (what padim used to inspect)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def write_png(path: Path, size: int = 32) -> Path:
    """A valid RGB PNG of seeded random pixels."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path
