"""The report's pictures: thumbnails of each image, its heat map and its outlines, as inline PNGs."""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np

from padim.reporting.overlay import MASK_COLOUR, THRESHOLD_COLOUR, as_rgb, contour, heatmap_overlay

THUMBNAIL = 256  # largest side of the pictures embedded in the report, in pixels
GRADIENT_STOPS = 11  # colour stops of the legend's CSS gradient


def png_data_uri(rgb: np.ndarray) -> str:
    """An RGB uint8 image as a data: URI holding a PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(as_rgb(rgb)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb_size(shape: tuple[int, ...], largest: int) -> tuple[int, int]:
    """(width, height) with the largest side at most `largest`, aspect kept."""
    h, w = int(shape[0]), int(shape[1])
    scale = min(1.0, largest / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _shrink(array: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
    """Resize to (width, height): 'image' (Lanczos), 'map' (bilinear, float) or 'mask' (nearest, bool)."""
    from PIL import Image

    if (array.shape[1], array.shape[0]) == size:
        return array
    if kind == "image":
        return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS))
    if kind == "map":
        return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0


def load_image(source: Any) -> np.ndarray:
    """An image given as an RGB uint8 array, or a path read at its own size."""
    if isinstance(source, (str, os.PathLike)):
        from padim.images import read_image

        return (read_image(source).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return as_rgb(np.asarray(source))


def row_pictures(image: np.ndarray, amap: np.ndarray, *, scale: tuple[float, float],
                 predicted: np.ndarray | None = None, gt_mask: np.ndarray | None = None,
                 largest: int = THUMBNAIL) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Thumbnails of one image: original, heat map overlay on `scale`, outlines (red: predicted, green: truth)."""
    size = _thumb_size(image.shape, largest)
    small = _shrink(image, size, "image")
    vmin, vmax = scale
    heat = heatmap_overlay(small, _shrink(np.asarray(amap, dtype=np.float32), size, "map"), vmin=vmin, vmax=vmax)
    if predicted is None and gt_mask is None:
        return small, heat, None
    outlined = small.copy()
    if gt_mask is not None:
        outlined[contour(_shrink(np.asarray(gt_mask) > 0, size, "mask"))] = MASK_COLOUR
    if predicted is not None:
        outlined[contour(_shrink(np.asarray(predicted) > 0, size, "mask"))] = THRESHOLD_COLOUR
    return small, heat, outlined


def colour_name(rgb: tuple[int, int, int]) -> str:
    """'red' / 'green' for the outline colours."""
    return {THRESHOLD_COLOUR: "red", MASK_COLOUR: "green"}.get(rgb, f"rgb{rgb}")


def jet_gradient() -> str:
    """A CSS linear-gradient with the heat maps' "jet" colours (low to high, left to right)."""
    import matplotlib

    cmap = matplotlib.colormaps["jet"]
    stops = []
    for t in np.linspace(0, 1, GRADIENT_STOPS):
        r, g, b = (int(round(255 * c)) for c in cmap(float(t))[:3])
        stops.append(f"rgb({r},{g},{b}) {100 * t:.0f}%")
    return "linear-gradient(to right, " + ", ".join(stops) + ")"
