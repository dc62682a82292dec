"""Mahalanobis distances and smoothed maps in numpy, as padim.scoring computes them in torch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

STAIR_WIDTH = 48  # as padim.staircase: column blocks of U = W^T without the zeros below the diagonal


def stair_edges(dim: int, width: int = STAIR_WIDTH) -> list[int]:
    """Column boundaries of the blocks (padim.staircase.stair_edges)."""
    k = max(1, round(dim / width))
    return [round(dim * i / k) for i in range(k + 1)]


def stairs_from_packed(packed: np.ndarray, dim: int) -> list[np.ndarray]:
    """Blocks U[:, :e_j+1, e_j:e_j+1] (float32) from W's packed lower triangles."""
    edges, stairs = stair_edges(dim), []
    for a, b in zip(edges, edges[1:]):
        row, col = np.arange(b)[:, None], np.arange(a, b)[None, :]
        inside = row <= col
        idx = np.where(inside, col * (col + 1) // 2 + row, 0)
        blk = packed[:, idx].astype(np.float32)
        blk[:, ~inside] = 0.0
        stairs.append(np.ascontiguousarray(blk))
    return stairs


def split_mean(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float64 mean as float32 hi + lo (centring (x - hi) - lo keeps float64's digits)."""
    hi = mean.astype(np.float32)
    return hi, (mean - hi.astype(np.float64)).astype(np.float32)


class Scorer:
    """Positions-first embeddings (P, B, d) -> maps (B, H, W) and image scores (B,)."""

    def __init__(self, mean: np.ndarray, packed: np.ndarray, smooth_h: np.ndarray, smooth_w: np.ndarray,
                 grid: tuple[int, int], threads: int) -> None:
        self.hi, self.lo = split_mean(mean)
        self.stairs = stairs_from_packed(packed, mean.shape[1])
        self.smooth_h, self.smooth_w = smooth_h.astype(np.float32), smooth_w.astype(np.float32)
        self.grid = grid
        self.pool = ThreadPoolExecutor(max(1, threads))
        self.threads = max(1, threads)

    def distances(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (P, B) of every patch; x is centred in place."""
        p = x.shape[0]
        out = np.empty(x.shape[:2], np.float32)
        step = max(1, -(-p // (4 * self.threads)))

        def part(start: int) -> None:
            sl = slice(start, min(p, start + step))
            xs = x[sl]
            xs -= self.hi[sl, None, :]
            xs -= self.lo[sl, None, :]
            total = np.zeros(xs.shape[:2], np.float32)
            for blk in self.stairs:
                y = np.matmul(xs[:, :, : blk.shape[1]], blk[sl])
                total += np.einsum("pbc,pbc->pb", y, y)
            out[sl] = np.sqrt(total)

        list(self.pool.map(part, range(0, p, step)))
        return out

    def __call__(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist = self.distances(embedding)
        d = dist.T.reshape(embedding.shape[1], *self.grid)
        maps = np.matmul(np.matmul(self.smooth_h, d), self.smooth_w.T)
        return maps, maps.reshape(maps.shape[0], -1).max(axis=1)
