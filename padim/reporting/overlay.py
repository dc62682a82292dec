"""Anomaly heat maps drawn over images, for people to look at.

`colour_scale` is the one place that decides a heat map's value range, for every caller: the results
folder and the demo (basis "range"), the report ("median") and the service ("calibration").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from padim.errors import InputError
from padim.utils.atomic import atomic_write

MASK_COLOUR = (0, 255, 0)
THRESHOLD_COLOUR = (255, 0, 0)
GAP_COLOUR = 255
NOT_INSPECTED_COLOUR = (128, 128, 128)  # hatch lines over pixels the model never saw (NaN in the map)
HATCH_SPACING, HATCH_WIDTH = 8, 2
MEDIAN_SAMPLE = 1_000_000  # pixels sampled for the median of colour_scale(basis="median")
ScaleBasis = Literal["range", "median", "calibration"]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An HxW or HxWx3 uint8 image as HxWx3 uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise InputError(f"image must be HxW or HxWx3, got shape {image.shape}")


def normalise(values: np.ndarray, *, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Values rescaled so vmin maps to 0 and vmax to 1 (default: their own range), clipped, NaN as 0."""
    if vmin is not None and vmax is not None and vmin > vmax:
        raise InputError(f"vmin ({vmin}) must not exceed vmax ({vmax})")
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    lo = float(vmin) if vmin is not None else min(low, float(vmax) if vmax is not None else low)
    hi = float(vmax) if vmax is not None else max(high, lo)
    with np.errstate(invalid="ignore"):
        # an empty range (e.g. a constant map) leaves no scale: only values above it count as high
        scaled = (values - lo) / (hi - lo) if hi > lo else (values > lo).astype(np.float64)
    return np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0)


def colour_scale(maps: Sequence[np.ndarray] = (), *, basis: ScaleBasis = "range",
                 calibration: Any = None) -> tuple[float | None, float | None]:
    """The (vmin, vmax) heat-map value range overlays share, decided one way for every caller.

    Parameters
    ----------
    maps : sequence of arrays
        Anomaly maps (NaN: not inspected, left out); unused with basis="calibration".
    basis : {"range", "median", "calibration"}
        Why the overlays need a scale, hence what it rests on:

        - "range": overlays of one run compared side by side (the results folder, the demo): the lowest
          to the highest pixel score of `maps`. The range of several maps is the lowest of their lows
          and the highest of their highs, so it can be gathered map by map and process by process.
        - "median": thumbnails at the images' original sizes (the report): the median pixel score to the
          highest, so that the zero border a centre-cropped model leaves around such maps (and bicubic
          ringing below it) does not squeeze the normal-to-defect range.
        - "calibration": one overlay drawn alone (the service), with no other maps to share a range with:
          fixed by the model's `calibration`, good pixels blue (its lowest pixel score) and the pixel
          threshold mid-scale; (None, None), each overlay spanning its own range, without a calibration.
    calibration : Calibration or None
        The model's ``calibration_``, for basis="calibration".

    Maps without a single finite pixel give (0.0, 1.0) for "range" and "median".
    """
    if basis == "calibration":
        return _calibrated_scale(calibration)
    if basis not in ("range", "median"):
        raise InputError(f"basis must be 'range', 'median' or 'calibration', got {basis!r}")
    arrays = [np.asarray(m) for m in maps]
    high = max((_finite_extreme(m, np.max, -np.inf) for m in arrays), default=-np.inf)
    if high == -np.inf:
        return 0.0, 1.0
    if basis == "range":
        return min(_finite_extreme(m, np.min, np.inf) for m in arrays), high
    median = _sampled_median(arrays)
    return (0.0, 1.0) if median is None else (min(median, high), high)


def _finite_extreme(values: np.ndarray, extreme: Any, empty: float) -> float:
    """np.min or np.max of the finite values, `empty` when there are none."""
    return float(extreme(values, initial=empty, where=np.isfinite(values)))


def _sampled_median(maps: list[np.ndarray]) -> float | None:
    """The median finite value of an evenly strided sample of at most about MEDIAN_SAMPLE pixels (None: none)."""
    total = sum(int(np.size(m)) for m in maps)
    step = max(1, -(-total // MEDIAN_SAMPLE))
    sample = np.concatenate([np.asarray(m, dtype=np.float32).ravel()[::step] for m in maps])
    sample = sample[np.isfinite(sample)]
    return float(np.median(sample)) if sample.size else None


def _calibrated_scale(calibration: Any) -> tuple[float | None, float | None]:
    """Lowest good pixel score to the pixel threshold mirrored above it (open-ended when they meet)."""
    if calibration is None:
        return None, None
    threshold, low = calibration.pixel_threshold, float(calibration.pixel_sample[0])
    return low, (2 * threshold - low if threshold > low else None)


def contour(region: np.ndarray) -> np.ndarray:
    """A 2 px line along the boundary of a boolean region (none along the image border)."""
    region = region.astype(bool)
    inner = region & ~ndimage.binary_erosion(region, border_value=1)
    outer = ndimage.binary_dilation(region) & ~region
    return inner | outer


def hatch(shape: tuple[int, ...]) -> np.ndarray:
    """Diagonal stripes: True on lines HATCH_WIDTH px wide every HATCH_SPACING px."""
    rows, cols = np.indices(shape[:2])
    return (rows + cols) % HATCH_SPACING < HATCH_WIDTH


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise if a per-pixel array does not match the image's height and width."""
    if array.shape != shape:
        raise InputError(f"{name} shape {array.shape} does not match image shape {shape}")


def heatmap_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    mask: np.ndarray | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """The image with its anomaly map blended on top in "jet" colours, plus optional contours.

    Non-finite map pixels (NaN: not inspected, outside the crop) are drawn hatched, never coloured.
    """
    import matplotlib

    rgb = as_rgb(image)
    scores = np.asarray(anomaly_map, dtype=np.float64)
    _check_shape("anomaly_map", scores, rgb.shape[:2])
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    colours = matplotlib.colormaps["jet"](normalise(scores, vmin=vmin, vmax=vmax))[..., :3] * 255.0
    out = np.clip(np.rint((1.0 - alpha) * rgb + alpha * colours), 0, 255).astype(np.uint8)
    unseen = ~np.isfinite(scores)
    if unseen.any():  # not inspected: the image dimmed under grey diagonal hatching, no heat colour
        out[unseen] = rgb[unseen] // 2
        out[unseen & hatch(scores.shape)] = NOT_INSPECTED_COLOUR
    if mask is not None:
        mask = np.asarray(mask)
        _check_shape("mask", mask, rgb.shape[:2])
        out[contour(mask > 0)] = MASK_COLOUR
    if threshold is not None:
        out[contour(scores >= threshold)] = THRESHOLD_COLOUR
    return out


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an image as a PNG atomically: readers see the old file or the whole new one."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(as_rgb(rgb))
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def side_by_side(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Panels placed left to right on a white background with a small gap between them."""
    if not panels:
        raise InputError("side_by_side needs at least one panel")
    rgbs = [as_rgb(p) for p in panels]
    height = max(p.shape[0] for p in rgbs)
    width = sum(p.shape[1] for p in rgbs) + gap * (len(rgbs) - 1)
    canvas = np.full((height, width, 3), GAP_COLOUR, dtype=np.uint8)
    left = 0
    for panel in rgbs:
        canvas[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + gap
    return canvas
