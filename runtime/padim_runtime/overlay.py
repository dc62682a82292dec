"""Heat maps for people, in numpy: jet colours, not-inspected pixels hatched, the pixel threshold's contour."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

THRESHOLD_COLOUR = (255, 0, 0)
NOT_INSPECTED = 128  # grey of the hatch lines over pixels the model never saw (NaN in the map)
GAP = 4  # white pixels between the panels


def calibrated_scale(calibration: dict | None) -> tuple[float | None, float | None]:
    """The service's colour scale, as padim's overlay.colour_scale(basis="calibration"): the lowest good pixel
    score to the pixel threshold mirrored above it; bundles without pixel_low start at 0."""
    if calibration is None:
        return None, None
    threshold, low = float(calibration["pixel_threshold"]), float(calibration.get("pixel_low", 0.0))
    return low, (2 * threshold - low if threshold > low else None)


def jet(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as jet-like RGB in [0, 1] (blue, cyan, yellow, red)."""
    return np.stack([np.clip(1.5 - np.abs(4 * t - s), 0, 1) for s in (3, 2, 1)], axis=-1)


def scaled(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """A map rescaled to [0, 1] between vmin and vmax, NaN as 0."""
    t = np.clip((amap - vmin) / (vmax - vmin if vmax > vmin else 1.0), 0, 1)
    return np.nan_to_num(t, nan=0.0)


def hatch(shape: tuple[int, ...]) -> np.ndarray:
    """Diagonal lines 2 px wide every 8 px."""
    rows, cols = np.indices(shape[:2])
    return (rows + cols) % 8 < 2


def contour(region: np.ndarray) -> np.ndarray:
    """The pixels on either side of a region's boundary (4-neighbours; none along the image's border)."""
    inside = np.pad(region, 1, constant_values=True)
    outside = np.pad(region, 1, constant_values=False)
    eroded = region.copy()
    dilated = region.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        window = (slice(1 + dy, inside.shape[0] - 1 + dy), slice(1 + dx, inside.shape[1] - 1 + dx))
        eroded &= inside[window]
        dilated |= outside[window]
    return (region & ~eroded) | (dilated & ~region)


def blend(rgb: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, threshold: float | None,
          alpha: float = 0.5) -> np.ndarray:
    """The image with its map blended on top in jet colours; NaN pixels dimmed and hatched; threshold contour."""
    colours = jet(scaled(amap, vmin, vmax)) * 255.0
    out = np.clip(np.rint((1 - alpha) * rgb + alpha * colours), 0, 255).astype(np.uint8)
    unseen = ~np.isfinite(amap)
    if unseen.any():
        out[unseen] = rgb[unseen] // 2
        out[unseen & hatch(amap.shape)] = NOT_INSPECTED
    if threshold is not None:
        with np.errstate(invalid="ignore"):
            out[contour(amap >= threshold)] = THRESHOLD_COLOUR
    return out


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two RGB panels of one height, left to right, with a white gap."""
    height, width = left.shape[:2]
    canvas = np.full((height, 2 * width + GAP, 3), 255, np.uint8)
    canvas[:, :width], canvas[:, width + GAP :] = left, right
    return canvas


def overlay_png(display: np.ndarray, amap: np.ndarray, vmin: float | None, vmax: float | None,
                threshold: float | None) -> bytes:
    """PNG of the image beside its heat map; a bound not given is the map's own (as padim's overlay.normalise)."""
    finite = amap[np.isfinite(amap)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    vmin = float(vmin) if vmin is not None else min(low, float(vmax) if vmax is not None else low)
    vmax = float(vmax) if vmax is not None else max(high, vmin)
    buf = io.BytesIO()
    Image.fromarray(side_by_side(display, blend(display, amap, vmin, vmax, threshold))).save(buf, format="PNG")
    return buf.getvalue()
