"""Anomaly maps: Mahalanobis distance per patch, bicubic resize, Gaussian smoothing, image score."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from padim_runtime.scoring import whitened_distances

from padim import paper, staircase
from padim.utils.blas import numpy_products
from padim.utils.cpus import available_cpus, run_slices
from padim.staircase import whitened_sq_norms

_CHUNK_BYTES = 1 << 23  # about 8 MB of float32 products per slice of positions
# Below this batch torch's products were as fast (the factor's reading bounds them) and numpy's
# group loop costs calls: batch-1 distances 11-15 ms with torch, 16-19 ms with numpy (Lite0).
NUMPY_MIN_BATCH = 4


def _numpy_distances(x: torch.Tensor, stairs: list[torch.Tensor], mean_hi: torch.Tensor | None,
                     mean_lo: torch.Tensor | None, threads: int | None = None) -> torch.Tensor:
    """patch_distances through padim_runtime's numpy kernel, positions split over threads (default: our CPUs)."""
    hi, lo = (None, None) if mean_hi is None else (mean_hi.numpy(), mean_lo.numpy())
    threads = threads or available_cpus()
    blocks = [blk.numpy() for blk in stairs]
    if threads == 1:
        return torch.from_numpy(whitened_distances(x.numpy(), blocks, hi, lo))
    with ThreadPoolExecutor(threads) as pool:  # numpy's products release the GIL
        return torch.from_numpy(whitened_distances(x.numpy(), blocks, hi, lo, parts=4 * threads, run=pool.map))


def split_mean(mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 mean as the float32 pair (hi, lo) with hi + lo = mean to about 2^-48 relative.

    Centring as (x - hi) - lo in float32 then keeps the digits a float64 subtraction keeps (the
    result is within an ulp of float64's), at float32 speed, even for features with a large offset.
    """
    hi = mean.to(torch.float32)
    return hi, (mean - hi.to(mean.dtype)).to(torch.float32)


def centre_(x: torch.Tensor, mean_hi: torch.Tensor, mean_lo: torch.Tensor) -> torch.Tensor:
    """Subtract each position's mean from positions-first (P, B, d) embeddings, in place."""
    return x.sub_(mean_hi[:, None, :]).sub_(mean_lo[:, None, :])


def patch_distances(embedding: torch.Tensor, stairs: list[torch.Tensor], mean_hi: torch.Tensor | None = None,
                    mean_lo: torch.Tensor | None = None, *, chunk: int | None = None,
                    threads: int | None = None) -> torch.Tensor:
    """Mahalanobis distances (P, B) of positions-first (P, B, d) embeddings, given the stairs of U = W^T.

    With mean_hi/mean_lo (split_mean) the embeddings are centred first, in place. Row b of x_p U is
    (W_p x_pb)^T (precision = W^T W), so batched products give every patch's whitened vector; its
    norm is the distance. On the CPU in float32, for batches of NUMPY_MIN_BATCH or more, the products go
    through numpy (padim.utils.blas); otherwise through torch, slices of positions in parallel
    (padim.utils.cpus.parallel_slices), on `threads` threads (default: this process's CPUs).
    """
    if embedding.shape[1] >= NUMPY_MIN_BATCH and numpy_products(embedding, *stairs, mean_hi, mean_lo,
                                                                 dtype=torch.float32):
        return _numpy_distances(embedding, stairs, mean_hi, mean_lo, threads)
    p, b, d = embedding.shape
    if torch.jit.is_tracing():  # no slice loop: a traced loop would bake the trace's batch into the graph
        if mean_hi is not None:
            embedding = (embedding - mean_hi[:, None, :]) - mean_lo[:, None, :]
        return torch.sqrt(whitened_sq_norms(embedding, stairs))
    out = torch.empty(p, b, dtype=embedding.dtype, device=embedding.device)

    def distances(sl: slice) -> None:
        x = embedding[sl]
        if mean_hi is not None:
            centre_(x, mean_hi[sl], mean_lo[sl])
        torch.sqrt(whitened_sq_norms(x, [blk[sl] for blk in stairs]), out=out[sl])

    # At least 4 slices a thread: a small batch as one slice would run on torch's OpenMP threads, whose
    # static split waits on a thread another job has taken (batch-1 Lite0 distances 2x slower beside a
    # 2-thread job); the slices of our pool go to whichever thread is free.
    step = _CHUNK_BYTES // (4 * b * d)
    if embedding.device.type == "cpu":
        step = min(step, -(-p // (4 * (threads or available_cpus()))))
    run_slices(distances, p, chunk or max(1, step), embedding.device, threads)
    return out


def mahalanobis_distance(embedding: torch.Tensor, mean: torch.Tensor, prec_chol: torch.Tensor, *,
                         chunk: int | None = None) -> torch.Tensor:
    """Mahalanobis distance of every patch, (B, d, h, w) -> (B, h, w), with precision = W^T W (W = prec_chol).

    The distance itself, the square root of what scikit-learn's EmpiricalCovariance.mahalanobis returns.
    """
    b, d, h, w = embedding.shape
    x = embedding.flatten(2).permute(2, 0, 1).to(torch.float32, copy=True)  # (P, B, d)
    stairs = staircase.from_upper(prec_chol.transpose(1, 2))
    return patch_distances(x, stairs, *split_mean(mean), chunk=chunk).T.reshape(b, h, w)


def gaussian_kernel(sigma: float, truncate: float = paper.GAUSSIAN_TRUNCATE) -> torch.Tensor:
    """1-D Gaussian weights of radius int(truncate*sigma + 0.5), as scipy.ndimage builds them."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _reflect_index(n: int, radius: int, device: torch.device | str = "cpu") -> torch.Tensor:
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
    """Full-resolution smoothed anomaly maps from (B, h, w) patch distances (the reference path)."""
    return gaussian_blur(upsample(patch_distances, size), sigma)


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of PyTorch's 1-D bicubic resize (align_corners=False)."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
    return F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=False).view(n_in, n_out).T


def blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) float64 matrix of the 1-D Gaussian filter with scipy's 'reflect' border."""
    if sigma <= 0:
        return torch.eye(n, dtype=torch.float64)
    kernel = gaussian_kernel(sigma)
    radius = (kernel.numel() - 1) // 2
    cols = _reflect_index(n, radius).unfold(0, kernel.numel(), 1)  # (n, taps): sources of each output
    out = torch.zeros(n, n, dtype=torch.float64)
    return out.scatter_add_(1, cols, kernel.expand(n, -1).contiguous())


def smoothing_matrices(grid: tuple[int, int], size: tuple[int, int],
                       sigma: float = paper.GAUSSIAN_SIGMA) -> tuple[torch.Tensor, torch.Tensor]:
    """(M_h, M_w) with maps = M_h @ distances @ M_w^T equal to anomaly_maps (float32).

    The bicubic resize and the Gaussian filter are both separable and linear along each axis, so
    per axis they compose into one (size, grid) matrix: two small matrix products replace the
    resize and the two 33-tap convolutions (sigma = 4) over the full-size map.
    """
    return tuple((blur_matrix(n_out, sigma) @ resize_matrix(n_in, n_out)).to(torch.float32)
                 for n_in, n_out in zip(grid, size))  # type: ignore[return-value]


def smooth_maps(distances: torch.Tensor, m_h: torch.Tensor, m_w: torch.Tensor) -> torch.Tensor:
    """Anomaly maps (B, H, W) from (B, h, w) patch distances through smoothing_matrices."""
    return torch.matmul(torch.matmul(m_h, distances), m_w.T)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image anomaly score: the maximum of its map."""
    return maps.flatten(1).amax(dim=1)
