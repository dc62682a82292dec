"""Bicubic resizing that equals PyTorch's F.interpolate(mode="bicubic", align_corners=False), as banded weights.

The full package resizes with PyTorch (antialiased when an image shrinks on either axis); the runtime
must give the same pixels without torch, so each axis becomes (n_out, n_in) weights built from the same
kernels, applied as bands: Keys' cubic convolution with A = -0.75 and clamped borders without antialias,
and PIL's cubic filter (a = -0.5) stretched over the shrink factor with antialias.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _keys(t: np.ndarray, a: float) -> np.ndarray:
    """Cubic convolution kernel of parameter a at distances t."""
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


@lru_cache(maxsize=64)
def _matrices(n_in: int, n_out: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """(weights, taps): (n_out, n_in) float64 weights of one axis of PyTorch's bicubic resize, and which
    inputs each output reads (a NaN there makes the output NaN in PyTorch, even at a zero weight)."""
    scale = n_in / n_out
    out, taps = np.zeros((n_out, n_in)), np.zeros((n_out, n_in), bool)
    rows = np.arange(n_out)
    if not antialias:
        src = (rows + 0.5) * scale - 0.5
        base = np.floor(src)
        t = src - base
        for k in range(-1, 3):
            idx = np.clip(base + k, 0, n_in - 1).astype(int)
            np.add.at(out, (rows, idx), _keys(t - k, -0.75))
            taps[rows, idx] = True
        return out, taps
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = _keys((j - centre + 0.5) * inv, -0.5)
        total = w.sum()
        out[i, lo:hi] = w / total if total != 0 else w
        taps[i, lo:hi] = True
    return out, taps


@lru_cache(maxsize=64)
def _bands(n_in: int, n_out: int, antialias: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axis as bands: (n_out, K) input indices, float32 weights and tap flags of each output's window.

    A bicubic output reads 4 inputs (or 4 x the shrink factor with antialias), so applying the band is
    K multiply-adds per output where the dense matrix costs n_in: 400 -> 256 px went from 3 x 256 x 400
    to 3 x 256 x 7 products per column.
    """
    weights, taps = _matrices(n_in, n_out, antialias)
    k = int(taps.sum(axis=1).max())
    first = np.where(taps.any(axis=1), taps.argmax(axis=1), 0)
    index = np.minimum(first[:, None] + np.arange(k)[None, :], n_in - 1)
    inside = np.take_along_axis(taps, index, axis=1) & (first[:, None] + np.arange(k)[None, :] < n_in)
    band = np.where(inside, np.take_along_axis(weights, index, axis=1), 0.0).astype(np.float32)
    return index, band, inside


GATHER_ELEMENTS = 4_000_000  # bound on the gathered windows held at once (16 MB of float32)


def _apply(image: np.ndarray, axis: int, index: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Weighted sum over each output's window along one axis (1: rows, 2: columns) of a (C, H, W) array."""
    c, h, w = image.shape
    n_out, k = index.shape
    if axis == 1:  # gathered rows (C, rows, K, W): one (1, K) x (K, W) product per output row
        out = np.empty((c, n_out, w), np.float32)
        step = max(1, GATHER_ELEMENTS // (c * k * w))
        for a in range(0, n_out, step):
            rows = slice(a, a + step)
            out[:, rows] = np.matmul(band[None, rows, None, :], image[:, index[rows], :])[:, :, 0, :]
        return out
    out = np.empty((c, h, n_out), np.float32)
    step = max(1, GATHER_ELEMENTS // (c * k * n_out))
    for a in range(0, h, step):
        out[:, a : a + step] = np.einsum("chwk,wk->chw", image[:, a : a + step][:, :, index], band)
    return out


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (C, H, W) float32 image to (C, *size) as padim.data.resize does (antialias when shrinking; NaN too)."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image
    antialias = h > size[0] or w > size[1]
    (ih, bh, th), (iw, bw, tw) = _bands(h, size[0], antialias), _bands(w, size[1], antialias)
    unseen = np.isnan(image)
    seen = unseen.any()
    out = _apply(_apply(np.where(unseen, 0, image) if seen else image, 1, ih, bh), 2, iw, bw)
    if seen:  # PyTorch's NaN spreads over every tap window that holds one: so does ours
        reach = _apply(_apply(unseen.astype(np.float32), 1, ih, th.astype(np.float32)), 2, iw, tw.astype(np.float32))
        out[reach > 0] = np.nan
    return out
