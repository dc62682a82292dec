"""Anomaly heat maps drawn over images, for people to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from padim.utils.atomic import atomic_write
from padim.errors import PadimError

MASK_COLOUR = (0, 255, 0)
THRESHOLD_COLOUR = (255, 0, 0)
GAP_COLOUR = 255
NOT_INSPECTED_COLOUR = (128, 128, 128)  # hatch lines over pixels the model never saw (NaN in the map)
HATCH_SPACING, HATCH_WIDTH = 8, 2


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An HxW or HxWx3 uint8 image as HxWx3 uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise PadimError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise PadimError(f"image must be HxW or HxWx3, got shape {image.shape}")


def normalise(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Values rescaled so vmin maps to 0 and vmax to 1 (default: their own range), clipped, NaN as 0."""
    if vmin is not None and vmax is not None and vmin > vmax:
        raise PadimError(f"vmin ({vmin}) must not exceed vmax ({vmax})")
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    lo = float(vmin) if vmin is not None else min(low, float(vmax) if vmax is not None else low)
    hi = float(vmax) if vmax is not None else max(high, lo)
    with np.errstate(invalid="ignore"):
        # an empty range (e.g. a constant map) leaves no scale: only values above it count as high
        scaled = (values - lo) / (hi - lo) if hi > lo else (values > lo).astype(np.float64)
    return np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0)


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
        raise PadimError(f"{name} shape {array.shape} does not match image shape {shape}")


def heatmap_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
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
        raise PadimError(f"alpha must be in [0, 1], got {alpha}")
    colours = matplotlib.colormaps["jet"](normalise(scores, vmin, vmax))[..., :3] * 255.0
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
        raise PadimError("side_by_side needs at least one panel")
    rgbs = [as_rgb(p) for p in panels]
    height = max(p.shape[0] for p in rgbs)
    width = sum(p.shape[1] for p in rgbs) + gap * (len(rgbs) - 1)
    canvas = np.full((height, width, 3), GAP_COLOUR, dtype=np.uint8)
    left = 0
    for panel in rgbs:
        canvas[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + gap
    return canvas
