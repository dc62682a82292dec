"""Reading a bundle folder: every file checked against the manifest's SHA-256 before it is used."""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT, VERSION, MANIFEST = "padim-bundle", 1, "bundle.json"
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class BundleError(ValueError):
    """A bundle or an input that cannot be used, in one line naming the file."""


@dataclass
class Bundle:
    """The checked contents of a bundle folder."""

    folder: Path
    manifest: dict[str, Any]
    graph: bytes
    mean: np.ndarray  # (P, d) float64
    factor: np.ndarray  # (P, d(d+1)/2) packed lower triangles of W
    smooth_h: np.ndarray
    smooth_w: np.ndarray
    projection: np.ndarray | None
    frame_mean: np.ndarray | None = None  # the frame check's pooled-feature Gaussian (padim.frame)
    frame_cholesky: np.ndarray | None = None


def check_name(name: str) -> str:
    """A name a served bundle can go by (a URL path segment, a metric label), or BundleError."""
    if not name or not set(name) <= NAME_CHARS:
        raise BundleError(f"bundle name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def _read(folder: Path, name: str, digests: dict[str, str]) -> bytes:
    """A file's bytes, refused unless the manifest names it with the SHA-256 it has."""
    path = folder / name
    if name not in digests:
        raise BundleError(f"{path}: not listed in {MANIFEST}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != digests[name]:
        raise BundleError(f"{path}: checksum mismatch (corrupt or edited bundle)")
    return data


def _npy(folder: Path, name: str, digests: dict[str, str]) -> np.ndarray:
    """A checked .npy file (no pickle)."""
    try:
        return np.load(io.BytesIO(_read(folder, name, digests)), allow_pickle=False)
    except ValueError as exc:
        raise BundleError(f"{folder / name}: not a numeric .npy array ({exc})") from None


def unshuffle(data: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    """Inverse of the exporter's byte-shuffle + zlib."""
    dt = np.dtype(dtype)
    planes = np.frombuffer(zlib.decompress(data), np.uint8).reshape(dt.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dt).reshape(shape)


def read_bundle(folder: str | Path) -> Bundle:
    """Load and check a bundle folder."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{folder}: not a bundle (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / MANIFEST}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != VERSION:
        raise BundleError(f"{folder}: bundle format {manifest.get('format')!r} v{manifest.get('format_version')} "
                          f"is not one this runtime reads ({FORMAT} v{VERSION})")
    digests = manifest.get("files", {})
    try:
        spec = manifest["factor"]
        (h, w), d = manifest["grid"], int(manifest["dim"])
        factor = unshuffle(_read(folder, spec["file"], digests), spec["dtype"], spec["shape"])
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise BundleError(f"{folder}: malformed bundle ({type(exc).__name__}: {exc})") from None
    bundle = Bundle(folder, manifest, _read(folder, "backbone.onnx", digests), _npy(folder, "mean.npy", digests),
                    factor, _npy(folder, "smooth_h.npy", digests), _npy(folder, "smooth_w.npy", digests),
                    _npy(folder, "projection.npy", digests) if "projection.npy" in digests else None)
    if manifest.get("frame") is not None:
        bundle.frame_mean = _npy(folder, "frame_mean.npy", digests)
        bundle.frame_cholesky = _npy(folder, "frame_cholesky.npy", digests)
        if bundle.frame_mean.shape != (2 * d,) or bundle.frame_cholesky.shape != (2 * d, 2 * d):
            raise BundleError(f"{folder}: frame check tensors do not match d={d}")
        _check_blocks(folder, manifest["frame"].get("blocks"), (h, w), d)
    if bundle.mean.shape != (h * w, d) or factor.shape != (h * w, d * (d + 1) // 2):
        raise BundleError(f"{folder}: tensor shapes do not match the manifest's grid {h}x{w} and d={d}")
    if not (np.isfinite(bundle.mean).all() and np.isfinite(factor).all()):
        raise BundleError(f"{folder}: the Gaussians contain NaN or inf")
    return bundle


def _check_blocks(folder: Path, blocks: Any, grid: tuple[int, int], d: int) -> None:
    """Refuse descriptor blocks that do not tile the d channels in order with steps dividing the grid."""
    if blocks is None:
        return
    end = 0
    for block in blocks if isinstance(blocks, list) else [None]:
        ok = (isinstance(block, list) and len(block) == 4 and all(isinstance(v, int) for v in block)
              and block[0] == end and block[1] > block[0]
              and all(s >= 1 and n % s == 0 for s, n in zip(block[2:], grid)))
        if not ok:
            raise BundleError(f"{folder}: bundle.json frame blocks {blocks!r} do not fit the grid {grid[0]}x{grid[1]} and d={d}")
        end = block[1]
    if end != d:
        raise BundleError(f"{folder}: bundle.json frame blocks cover {end} of d={d} channels")
