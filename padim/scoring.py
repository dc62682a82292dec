"""Anomaly maps: Mahalanobis distance per patch, bicubic resize, Gaussian smoothing, image score."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from padim import paper


def mahalanobis(embedding: torch.Tensor, mean: torch.Tensor, prec_chol: torch.Tensor,
                chunk: int | None = None) -> torch.Tensor:
    """Mahalanobis distance of every patch, (B, d, h, w) -> (B, h, w), with precision = W^T W.

    Centring happens in the mean's precision (float64) before the float32 product, so features
    with a large common offset lose no digits; positions go in chunks to bound that float64 copy.
    """
    b, d, h, w = embedding.shape
    x = embedding.flatten(2).permute(2, 0, 1)  # (P, B, d)
    step = chunk or max(1, (1 << 23) // (b * d))  # about 64 MB of float64 per chunk
    dist = torch.empty(x.shape[0], b, dtype=prec_chol.dtype, device=x.device)
    for start in range(0, x.shape[0], step):
        sl = slice(start, start + step)
        centred = (x[sl].to(mean.dtype) - mean[sl, None, :]).to(prec_chol.dtype)
        z = torch.bmm(centred, prec_chol[sl].transpose(1, 2))  # row p, b: W_p (x_pb - mu_p)
        dist[sl] = z.square().sum(dim=-1).sqrt()
    return dist.T.reshape(b, h, w)


def gaussian_kernel(sigma: float, truncate: float = paper.GAUSSIAN_TRUNCATE) -> torch.Tensor:
    """1-D Gaussian weights of radius int(truncate*sigma + 0.5), as scipy.ndimage builds them."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _reflect_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices padding a length-n axis by radius in scipy's 'reflect' mode (d c b a | a b c d | d c b a)."""
    idx = torch.arange(-radius, n + radius, device=device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def gaussian_blur(maps: torch.Tensor, sigma: float = paper.GAUSSIAN_SIGMA) -> torch.Tensor:
    """Separable Gaussian filter of (B, H, W) maps, equal to scipy.ndimage.gaussian_filter(mode='reflect')."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma).to(maps)
    radius = (kernel.numel() - 1) // 2
    x = maps[:, None]
    rows = _reflect_index(x.shape[-2], radius, maps.device)
    cols = _reflect_index(x.shape[-1], radius, maps.device)
    x = x.index_select(-2, rows).index_select(-1, cols)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x[:, 0]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (B, h, w) maps to the preprocessed image size (paper, Section IV-B)."""
    return F.interpolate(maps[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]


def anomaly_maps(
    patch_distances: torch.Tensor, size: tuple[int, int], sigma: float = paper.GAUSSIAN_SIGMA
) -> torch.Tensor:
    """Full-resolution smoothed anomaly maps from (B, h, w) patch distances."""
    return gaussian_blur(upsample(patch_distances, size), sigma)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image anomaly score: the maximum of its map."""
    return maps.flatten(1).amax(dim=1)

