"""Mahalanobis distances and smoothed maps in numpy, as padim.scoring computes them in torch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

STAIR_WIDTH = 48  # as padim.staircase: column blocks of U = W^T without the zeros below the diagonal
# Embedding rows (positions x batch) whose products are formed together: the products (1024 x 48
# floats, 192 KB) stay in the core's cache between the product, the squares and their sum; for small
# batches more positions a group also means fewer calls (32 positions at a batch of 32, 256 at 4).
GROUP_ROWS = 1024


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


class _OneBlasThread:
    """numpy's BLAS on one thread while any caller is inside (our threads split the work; its own
    would oversubscribe the cores). Counted, so that overlapping users from several threads restore
    the BLAS's thread count only when the last one leaves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._limit: Any = None
        self._controller: Any = None

    def __enter__(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                try:
                    import threadpoolctl
                except ImportError:  # optional: without it OpenBLAS keeps its threads (slower, same numbers)
                    return
                if self._controller is None:  # the libraries loaded now (numpy's BLAS): looked up once
                    self._controller = threadpoolctl.ThreadpoolController()
                self._limit = self._controller.limit(limits=1, user_api="blas")

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None


one_blas_thread = _OneBlasThread()


def _distances_part(x: np.ndarray, stairs: list[np.ndarray], hi: np.ndarray | None, lo: np.ndarray | None,
                    out: np.ndarray, positions: range) -> None:
    """Fill out[positions] with the distances of those positions, a group at a time (x centred in place)."""
    b = x.shape[1]
    group = max(1, GROUP_ROWS // b)
    width = max(blk.shape[2] for blk in stairs)
    products = np.empty((group, b, width), np.float32)
    ones = np.ones(width, np.float32)
    for start in range(positions.start, positions.stop, group):
        sl = slice(start, min(positions.stop, start + group))
        xs, total = x[sl], out[sl]
        if hi is not None:
            xs -= hi[sl, None, :]
            xs -= lo[sl, None, :]
        total[...] = 0.0
        for blk in stairs:
            y = products[: xs.shape[0], :, : blk.shape[2]]
            np.matmul(xs[:, :, : blk.shape[1]], blk[sl], out=y)
            np.multiply(y, y, out=y)
            total += y @ ones[: blk.shape[2]]  # the row sums as a matrix-vector product: faster than sum(-1)
        np.sqrt(total, out=total)


def whitened_distances(x: np.ndarray, stairs: list[np.ndarray], hi: np.ndarray | None = None,
                       lo: np.ndarray | None = None, *, parts: int = 1,
                       run: Callable[[Callable[[range], None], Iterable[range]], Iterable] = map) -> np.ndarray:
    """Mahalanobis distances (P, B) of positions-first float32 embeddings (P, B, d), given the stairs of U.

    With hi/lo (split_mean) x is centred first, in place. The positions go in `parts` ranges through
    `run` (map, or a thread pool's map: numpy's products release the GIL).
    """
    p = x.shape[0]
    out = np.empty(x.shape[:2], np.float32)
    step = max(1, -(-p // max(1, parts)))
    with one_blas_thread:
        for _ in run(lambda r: _distances_part(x, stairs, hi, lo, out, r),
                     [range(s, min(p, s + step)) for s in range(0, p, step)]):
            pass
    return out


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
        return whitened_distances(x, self.stairs, self.hi, self.lo, parts=4 * self.threads, run=self.pool.map)

    def __call__(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist = self.distances(embedding)
        d = dist.T.reshape(embedding.shape[1], *self.grid)
        maps = np.matmul(np.matmul(self.smooth_h, d), self.smooth_w.T)
        return maps, maps.reshape(maps.shape[0], -1).max(axis=1)
