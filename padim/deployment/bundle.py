"""Inference bundles: a fitted model as files the torch-free runtime (padim-runtime, runtime/) can run.

A bundle is a folder:
- backbone.onnx: the tapped backbone and the patch embedding (Rd channels, nearest repeat), normalised
  images (B, 3, H, W) -> positions-first embeddings (P, B, d), the graph the CPU engines run;
- mean.npy (float64, P x d), smooth_h.npy / smooth_w.npy (the bicubic resize + Gaussian filter as one
  matrix per axis, float32) and, with PCA, projection.npy: plain .npy, read with allow_pickle=False;
- factor.bin: W's lower triangles packed row by row (P x d(d+1)/2, float32 or float16), bytes
  shuffled by significance and zlib-compressed (the exponent bytes compress: 0.86 of the raw size);
- frame_mean.npy / frame_cholesky.npy (float64): the frame check's pooled-feature Gaussian (padim.frame),
  when the model has one;
- bundle.json: format version, preprocessing, shapes, thresholds, calibration, the frame check's
  contrast floor and threshold, provenance (backbone, weight checksum, library version, training images) and the
  SHA-256 of every other file, which the runtime checks before using any of them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from padim import staircase
from padim.embedding import Blocks
from padim.engine import export_graph
from padim.errors import PadimError
from padim.frame import ABOVE, BLANK, BLANK_CONTRAST_FRACTION, UNLIKE
from padim.model import PaDiM

BUNDLE_FORMAT = "padim-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"
_ZLIB_LEVEL = 6


def shuffle_compress(array: np.ndarray) -> bytes:
    """zlib of the array's bytes regrouped by significance (all first bytes, then all second bytes, ...)."""
    width = array.dtype.itemsize
    planes = np.ascontiguousarray(array).view(np.uint8).reshape(-1, width).T
    return zlib.compress(np.ascontiguousarray(planes).tobytes(), _ZLIB_LEVEL)


def _npy(array: np.ndarray) -> bytes:
    """An array as .npy bytes (no pickle: numeric dtypes only)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def calibration_meta(model: PaDiM) -> dict[str, Any] | None:
    """Thresholds and the numbers their normalisation needs, or None for an uncalibrated model."""
    cal = getattr(model, "calibration_", None)
    if cal is None:
        return None
    return {"fpr": cal.fpr, "source": cal.source, "image_threshold": cal.image_threshold,
            "frame_threshold": cal.frame_threshold,
            "pixel_threshold": cal.pixel_threshold, "image_scores": [float(s) for s in cal.image_scores],
            "pixel_low": float(cal.pixel_sample[0])}  # the lowest good pixel score: the heat maps' colour scale


def export_bundle(model: PaDiM, folder: str | os.PathLike, half: bool = False) -> Path:
    """Write a fitted model as an inference bundle folder (replaced atomically as a whole); return it."""
    model._require_fitted()
    folder = Path(folder)
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise PadimError(f"{folder}: cannot write the bundle, folder {parent} does not exist")
    if folder.exists() and not (folder / MANIFEST).is_file():
        raise PadimError(f"{folder}: exists and is not a bundle: refusing to replace it")
    net, meta = model.net_, model.metadata()
    factor = staircase.to_packed([s.cpu() for s in net.factor]).numpy()
    factor = factor.astype(np.float16) if half else factor
    files = {
        "backbone.onnx": export_graph(net.features, model.preprocessing.output_size),
        "mean.npy": _npy(net.mean.cpu().numpy()),
        "smooth_h.npy": _npy(net.smooth_h.cpu().numpy()),
        "smooth_w.npy": _npy(net.smooth_w.cpu().numpy()),
        "factor.bin": shuffle_compress(factor),
    }
    if net.projection.numel():
        files["projection.npy"] = _npy(net.projection.cpu().numpy())
    frame = getattr(model, "frame_", None)
    if frame is not None:
        files["frame_mean.npy"] = _npy(frame.mean.cpu().numpy())
        files["frame_cholesky.npy"] = _npy(frame.cholesky.cpu().numpy())
    manifest = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
        "preprocessing": model.preprocessing.to_dict(), "grid": list(net.grid), "dim": model.embedding_dim_,
        "factor": {"file": "factor.bin", "dtype": str(factor.dtype), "shape": list(factor.shape),
                   "encoding": "byte-shuffle+zlib", "layout": "W lower triangle, row-major packed"},
        "calibration": calibration_meta(model),
        "frame": None if frame is None else {"contrast_min": frame.contrast_min,
                                             "blank_fraction": BLANK_CONTRAST_FRACTION, "reasons": [BLANK, UNLIKE, ABOVE],
                                             "blocks": _blocks(net.descriptor_blocks)},
        "provenance": {"backbone": meta["backbone"], "library_version": meta["library_version"],
                       "n_samples_seen": meta["n_samples_seen"], "created": meta["created"],
                       "eps": meta["eps"], "sigma": meta["sigma"], "seed": meta["seed"]},
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    _write_folder(folder, {**files, MANIFEST: (json.dumps(manifest, indent=2) + "\n").encode()})
    return folder


def _blocks(blocks: Blocks | None) -> list[list[int]] | None:
    """The network's descriptor blocks (padim.embedding.native_blocks) for bundle.json, None under PCA."""
    return None if blocks is None else [list(b) for b in blocks]


def _write_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Write every file into a staging folder beside `folder`, then swap it in (never half a bundle)."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent if str(folder.parent) else "."))
    except OSError as exc:
        raise PadimError(f"{folder}: cannot write ({exc.strerror})") from None
    old = folder.with_name(f".{folder.name}.old")
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
    except OSError as exc:
        raise PadimError(f"{folder}: cannot write ({exc.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def bundle_size(folder: str | os.PathLike) -> int:
    """Bytes on disk of a bundle's files."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
