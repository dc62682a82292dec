"""What a model file holds, in words (what `padim info` prints), read from its metadata alone."""

from __future__ import annotations

import json
import os
from typing import Any

from padim.errors import ModelFileError


def model_file_info(path: str | os.PathLike, *, as_json: bool = False) -> str:
    """The summary of a model file (or its raw metadata as JSON); the backbone is not loaded."""
    from padim.modelfile import read_model

    _tensors, meta = read_model(path)
    try:
        return json.dumps(meta, indent=2) if as_json else info_text(path, meta)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelFileError(f"{path}: model metadata malformed ({type(exc).__name__}: {exc})") from None


def info_text(path: str | os.PathLike, meta: dict[str, Any]) -> str:
    """The human-readable summary of a model file's metadata (what `padim info` prints)."""
    bb, pre = meta.get("backbone", {}), meta.get("preprocessing", {})
    weights = bb.get("weights", {})
    crop = pre.get("crop_size")
    lines = [
        f"model file      {path} ({os.path.getsize(path) / 1e6:.1f} MB, format v{meta['format_version']}, "
        f"torch-padim {meta.get('library_version')})",
        f"backbone        {bb.get('name')} taps {','.join(bb.get('layers', []))} "
        f"(channels {bb.get('channels')}, strides {bb.get('strides')})",
        f"weights         {weights.get('kind')} {weights.get('path') or ''} sha256 {str(weights.get('sha256'))[:16]}..."
        + ("  [RANDOM WEIGHTS: not for real use]" if weights.get("kind") == "random" else ""),
        f"features        {meta.get('n_features')} of {meta.get('n_features_total')} (seed {meta.get('seed')})",
        f"positions       {'x'.join(map(str, meta.get('feature_shape', [])))}",
        f"preprocessing   resize {'x'.join(map(str, pre.get('image_size', [])))} bicubic, "
        + (f"center crop {'x'.join(map(str, crop))}" if crop else "no crop"),
        f"inspected       {coverage_text(pre)}",
        f"eps, sigma      {meta.get('eps')}, {meta.get('sigma')}",
        f"training images {meta.get('n_samples_seen')}",
        f"statistics      {'stored (resumable)' if meta.get('statistics') else 'not stored'}",
        "frame check     " + frame_check_text(meta),
        "thresholds      " + (f"image {cal['image_threshold']:.4g}, pixel {cal['pixel_threshold']:.4g} at FPR {cal['fpr']:.2%} "
                              f"on {cal['n_images']} good images ({cal['source']})" if (cal := meta.get("calibration"))
                              else "none (not calibrated: padim calibrate MODEL GOOD_DIR, or fit --holdout 0.1)"),
        f"created         {meta.get('created')}",
        f"engine here     {engine_here()} (model files are engine-independent; --engine to choose)",
    ]
    return "\n".join(lines)


def coverage_text(pre: dict[str, Any]) -> str:
    """What share of every image the model sees, for padim info."""
    from padim.data import Preprocess

    fh, fw = Preprocess.from_dict(pre).inspected_fraction()
    if fh == fw == 1.0:
        return "the whole image (no crop)"
    return (f"centre {fh:.1%} x {fw:.1%} of every image ({fh * fw:.1%} of its area); the rest is NOT inspected "
            f"(NaN in original-size maps, hatched in overlays)")


def frame_check_text(meta: dict[str, Any]) -> str:
    """`padim info`'s description of the frame check (padim.frame)."""
    frame, cal = meta.get("frame"), meta.get("calibration") or {}
    if not isinstance(frame, dict):
        return "off (saved before the frame check: blank and foreign frames pass; refit to enable it)"
    threshold = (f"frame threshold {cal['frame_threshold']:.4g}" if "frame_threshold" in cal
                 else "blank frames only until calibrated")
    contrast = frame.get("contrast_min")
    contrast = f"{contrast:.3g}" if isinstance(contrast, (int, float)) else repr(contrast)
    return (f"on: pooled-feature Gaussian of {frame.get('n_images')} images ({frame.get('dim')} dims), "
            f"training contrast minimum {contrast}, {threshold}")


def engine_here(device: str = "cpu") -> str:
    """What engine='auto' picks on this machine, with its version and thread count (nothing is built)."""
    from importlib.metadata import PackageNotFoundError, version

    from padim.utils.cpus import available_cpus
    from padim.engine import default_engine

    name = default_engine(device)
    try:
        ver = version("torch" if name.startswith("torch") else name)
    except PackageNotFoundError:
        ver = "?"
    return f"{name} {ver} on {device}, {available_cpus()} threads"
