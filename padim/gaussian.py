"""Per-position multivariate Gaussians (paper Eq. 1), accumulated in one streaming pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from padim_runtime.scoring import one_blas_thread

from padim import staircase
from padim.utils.blas import numpy_products
from padim.utils.cpus import run_slices, torch_threads
from padim.errors import InputError

STATS_DTYPE = torch.float64
GRAM_FLOATS = 1 << 16  # float64 block products formed together (0.5 MB, in L2): 8 positions at d=176, 1 at 550
# Above this d torch's in-place products stay: at d=550 (WR50, blocks of 38 embeddings) numpy's tied in
# the update alone and whole fits ran 2-4% slower (2.34 vs 2.38-2.44 img/s, 2 pairs); at d=176 it was 1.48x.
GRAM_NUMPY_MAX_DIM = 256


def tril_flat_index(dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat (row-major) indices of the lower triangle of a dim x dim matrix, in packed order."""
    rows, cols = torch.tril_indices(dim, dim, device=device)
    return rows * dim + cols


def pack_lower(matrices: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The lower triangles of (P, d, d) matrices as (P, d(d+1)/2), row by row (chunked: views may be strided)."""
    dim = matrices.shape[-1]
    flat = tril_flat_index(dim, matrices.device)
    return torch.cat([m.reshape(m.shape[0], dim * dim)[:, flat] for m in matrices.split(chunk)])


def unpack_lower(packed: torch.Tensor, dim: int, *, dtype: torch.dtype | None = None, chunk: int = 256,
                 transpose: bool = False) -> torch.Tensor:
    """Inverse of pack_lower (zeros above the diagonal), filled chunk by chunk to bound the working memory.

    transpose=True fills the transposed (upper-triangular) matrices directly, without a second copy.
    """
    rows, cols = torch.tril_indices(dim, dim, device=packed.device)
    flat = cols * dim + rows if transpose else rows * dim + cols
    out = torch.zeros(packed.shape[0], dim, dim, dtype=dtype or packed.dtype, device=packed.device)
    view = out.view(packed.shape[0], dim * dim)
    for start in range(0, packed.shape[0], chunk):
        view[start : start + chunk, flat] = packed[start : start + chunk].to(out.dtype)
    return out


def symmetric_from_lower(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Rebuild symmetric (P, d, d) matrices from their packed lower triangles."""
    return mirror_lower(unpack_lower(packed, dim))


def mirror_lower(lower: torch.Tensor) -> torch.Tensor:
    """Symmetric matrices from (P, d, d) lower-triangular ones (zeros above the diagonal)."""
    return lower + lower.tril(-1).transpose(1, 2)


def row_blocks(dim: int) -> list[tuple[int, int, int]]:
    """(first row, end row, offset) of the row blocks in which GaussianStats stores a lower triangle.

    Block [r0, r1) keeps rows r0..r1-1 and columns 0..r1-1 as one contiguous (r1 - r0) x r1
    rectangle, so one batched product per block updates it in place: about 56% of the full
    matrix for eight blocks, with no gather (packing element by element cost 3x the time).
    Blocks of at least 44 rows: narrower ones made the products too small to run fast (d=176: four
    blocks, 62% of the matrix, updated 1.2-1.25x faster than eight); large d keeps eight (WR50's memory).
    """
    size = max(44, math.ceil(dim / 8))
    blocks, offset = [], 0
    for r0 in range(0, dim, size):
        r1 = min(dim, r0 + size)
        blocks.append((r0, r1, offset))
        offset += (r1 - r0) * r1
    return blocks


def row_blocks_numel(dim: int) -> int:
    """Numbers stored per position for a d x d symmetric matrix in row blocks (more than d(d+1)/2, see row_blocks)."""
    r0, r1, offset = row_blocks(dim)[-1]
    return offset + (r1 - r0) * r1


@dataclass
class GaussianStats:
    """Count, mean and scatter (sum of centred outer products) of embeddings at every position.

    Batches and partial statistics are combined with the pairwise update of Chan, Golub and
    LeVeque (1979): exact in any order, and free of the cancellation a raw sum of squares suffers
    when features have a large offset. The symmetric scatter keeps only its lower triangle, in
    row blocks (see row_blocks): 4.3 GB instead of 7.6 GB for WR50-Rd550 at 224 px.

    Parameters
    ----------
    n : int
        Number of samples (images) seen.
    mean : torch.Tensor
        (P, d) float64 means, one row per position.
    scatter : torch.Tensor
        (P, row_blocks_numel(d)) float64: each position's scatter, its lower triangle in row blocks.

    Attributes
    ----------
    n, mean, scatter
        As given, updated in place by update and merge.
    dim : int
        Embedding dimension d.
    """

    n: int
    mean: torch.Tensor
    scatter: torch.Tensor

    @classmethod
    def empty(cls, n_positions: int, dim: int, device: torch.device | str = "cpu") -> "GaussianStats":
        """Statistics of zero samples."""
        return cls(
            0,
            torch.zeros(n_positions, dim, dtype=STATS_DTYPE, device=device),
            torch.zeros(n_positions, row_blocks_numel(dim), dtype=STATS_DTYPE, device=device),
        )

    @classmethod
    def from_packed(cls, n: int, mean: torch.Tensor, packed: torch.Tensor, *, chunk: int = 256) -> "GaussianStats":
        """Statistics from a mean and packed lower-triangle scatters (the model file's layout)."""
        stats = cls.empty(mean.shape[0], mean.shape[1], mean.device)
        stats.n = n
        stats.mean.copy_(mean)
        for start in range(0, mean.shape[0], chunk):
            lower = unpack_lower(packed[start : start + chunk].to(stats.scatter), stats.dim)
            for (r0, r1, _), view in zip(row_blocks(stats.dim), stats._block_views(slice(start, start + chunk))):
                view.copy_(lower[:, r0:r1, :r1])
        return stats

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return int(self.mean.shape[1])

    def _block_views(self, positions: slice = slice(None)) -> list[torch.Tensor]:
        """Writable (P, r1 - r0, r1) views of the stored row blocks."""
        rows = self.scatter[positions]
        return [rows[:, off : off + (r1 - r0) * r1].view(rows.shape[0], r1 - r0, r1)
                for r0, r1, off in row_blocks(self.dim)]

    def scatter_matrices(self, positions: slice = slice(None)) -> torch.Tensor:
        """Full symmetric (P, d, d) scatter matrices of some positions."""
        views = self._block_views(positions)
        full = torch.zeros(views[0].shape[0], self.dim, self.dim, dtype=self.scatter.dtype, device=self.scatter.device)
        for (r0, r1, _), view in zip(row_blocks(self.dim), views):
            full[:, r0:r1, :r1] = view
        return mirror_lower(full.tril_())  # the diagonal blocks' upper parts are redundant: dropped

    def packed_scatter(self, chunk: int = 256) -> torch.Tensor:
        """The scatter as packed lower triangles (P, d(d+1)/2), the model file's layout."""
        return torch.cat([pack_lower(self.scatter_matrices(slice(s, s + chunk)))
                          for s in range(0, self.mean.shape[0], chunk)])

    def update(self, x: torch.Tensor, chunk_bytes: int = 1 << 25) -> None:
        """Add a batch of embeddings given as (P, B, d).

        Positions go in slices (about 32 MB of float64 each), in parallel on the CPU. The scatter is
        memory-bound (each update reads and writes all of it), so callers gain by passing large
        batches (see BatchBuffer).
        """
        p, b, d = x.shape

        def update_slice(sl: slice) -> None:
            # One float64 buffer holds the centred batch and, in its last row, the mean-correction row
            # of _combine, so the scatter update is one product per row block with no concatenation.
            rows = torch.empty(sl.stop - sl.start, b + 1, d, dtype=STATS_DTYPE, device=x.device)
            batch = rows[:, :b].copy_(x[sl])
            batch_mean = batch.mean(dim=1)
            batch.sub_(batch_mean[:, None, :])
            self._combine(b, batch_mean, rows, sl)

        with one_blas_thread:  # the block products may go through numpy (_add_block_products)
            run_slices(update_slice, p, max(1, chunk_bytes // (8 * (b + 1) * d)), x.device)
        self.n += b

    def merge(self, other: "GaussianStats") -> None:
        """Add another set of statistics over the same positions and dimensions."""
        if other.mean.shape != self.mean.shape or other.scatter.shape != self.scatter.shape:
            raise InputError(f"cannot merge statistics of shape {tuple(other.mean.shape)} into {tuple(self.mean.shape)}")
        self.scatter.add_(other.scatter.to(self.scatter.device))
        self._combine(other.n, other.mean.to(self.mean.device), None, slice(None))
        self.n += other.n

    def _combine(self, n_b: int, mean_b: torch.Tensor, rows: torch.Tensor | None, positions: slice) -> None:
        """Chan et al. update of some positions with n_b samples of mean mean_b (self.n is not changed).

        For a batch, rows holds its centred samples and one free row. scatter += C^T C + (n_a n_b / n)
        delta delta^T is done as one product [C; s delta]^T [C; s delta] with s = sqrt(n_a n_b / n),
        in place, one row block at a time.
        """
        if n_b == 0:
            return
        n_a, n = self.n, self.n + n_b
        mean = self.mean[positions]
        delta = mean_b - mean
        if rows is None:
            rows = delta[:, None, :] * math.sqrt(n_a * n_b / n)
        else:
            torch.mul(delta, math.sqrt(n_a * n_b / n), out=rows[:, -1])
        _add_block_products(self._block_views(positions), row_blocks(self.dim), rows)
        mean.add_(delta, alpha=n_b / n)


    def covariance(self, eps: float, positions: slice = slice(None)) -> torch.Tensor:
        """Regularised covariance scatter/(N-1) + eps*I (Eq. 1); with a single sample it is eps*I."""
        return mirror_lower(self.lower_covariance(eps, positions))

    def lower_covariance(self, eps: float, positions: slice = slice(None)) -> torch.Tensor:
        """The lower triangles (and diagonal blocks) of `covariance`, zeros elsewhere: what Cholesky reads."""
        if self.n == 0:
            raise InputError("no training images: the Gaussians are undefined")
        views = self._block_views(positions)
        cov = torch.zeros(views[0].shape[0], self.dim, self.dim, dtype=self.scatter.dtype, device=self.scatter.device)
        if self.n > 1:
            for (r0, r1, _), view in zip(row_blocks(self.dim), views):
                torch.div(view, self.n - 1, out=cov[:, r0:r1, :r1])
        cov.diagonal(dim1=1, dim2=2).add_(eps)
        return cov.tril_()


def _add_block_products(views: list[torch.Tensor], blocks: list[tuple[int, int, int]], rows: torch.Tensor) -> None:
    """views[j] += rows[:, :, r0:r1]^T rows[:, :, :r1] for every row block j (rows: (P, K, d) float64)."""
    if rows.shape[2] > GRAM_NUMPY_MAX_DIM or not numpy_products(rows, *views, dtype=STATS_DTYPE):
        for (r0, r1, _), view in zip(blocks, views):
            view.baddbmm_(rows[:, :, r0:r1].transpose(1, 2), rows[:, :, :r1])
        return
    x, targets = rows.numpy(), [v.numpy() for v in views]
    tallest = max(r1 - r0 for r0, r1, _ in blocks)
    group = max(1, GRAM_FLOATS // (tallest * x.shape[2]))
    products = np.empty((group, tallest, x.shape[2]))
    for start in range(0, x.shape[0], group):
        g = slice(start, min(x.shape[0], start + group))
        for (r0, r1, _), target in zip(blocks, targets):
            prod = products[: g.stop - g.start, : r1 - r0, :r1]
            np.matmul(x[g, :, r0:r1].transpose(0, 2, 1), x[g, :, :r1], out=prod)
            target[g] += prod


class BatchBuffer:
    """Collects positions-first (P, B, d) batches into one float32 block before a statistics update.

    Each GaussianStats.update reads and writes the whole float64 scatter, so updating with a few
    hundred embeddings at once instead of 32 cuts that memory traffic (the fit's bottleneck once the
    backbone is fast) several times; the block is bounded to `max_bytes`.

    Parameters
    ----------
    stats : GaussianStats
        The statistics the batches are added to.
    max_bytes : int
        Size bound of the float32 block.

    Attributes
    ----------
    stats : GaussianStats
        As given.
    capacity : int
        Embeddings per position the block holds.
    block : torch.Tensor or None
        The (P, capacity, d) block, allocated on the first batch.
    filled : int
        Embeddings per position queued in it.
    """

    def __init__(self, stats: GaussianStats, max_bytes: int = 1 << 28) -> None:
        self.stats = stats
        p, d = stats.mean.shape
        self.capacity = max(1, max_bytes // (4 * p * d))
        self.block: torch.Tensor | None = None
        self.filled = 0

    def add(self, x: torch.Tensor) -> None:
        """Queue a batch (copied), updating the statistics whenever the block is full."""
        while x.shape[1]:
            if self.block is None:
                self.block = torch.empty(x.shape[0], self.capacity, x.shape[2], dtype=torch.float32, device=x.device)
            take = min(x.shape[1], self.capacity - self.filled)
            with torch_threads(1):  # a memory-bound copy (padim.utils.cpus.torch_threads)
                self.block[:, self.filled : self.filled + take].copy_(x[:, :take])
            self.filled += take
            x = x[:, take:]
            if self.filled == self.capacity:
                self.flush()

    def flush(self) -> None:
        """Update the statistics with what is queued."""
        if self.filled and self.block is not None:
            self.stats.update(self.block[:, : self.filled])
        self.filled = 0


INVERSE_BASE = 64  # inverse_lower solves blocks up to this size directly
FACTOR_CHUNK_BYTES = 1 << 26  # float64 working memory per thread of the factorisation (3 d x d matrices a position)


def factor_chunk(dim: int) -> int:
    """Positions factorised at once per thread: 128, fewer for large d (WR50-Rd550: 8, 64 MB not 0.9 GB)."""
    return max(1, min(128, FACTOR_CHUNK_BYTES // (3 * 8 * dim * dim)))


def inverse_lower(lower: np.ndarray) -> np.ndarray:
    """L^-1 of lower-triangular (P, n, n) float64 matrices (each row of the stack one position)."""
    n = lower.shape[-1]
    if n <= INVERSE_BASE:
        eye = torch.eye(n, dtype=torch.float64).expand(lower.shape)
        return torch.linalg.solve_triangular(torch.from_numpy(lower), eye, upper=False).numpy()
    # [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]: two halves and two stacked products,
    # about 2n^3/3 flops at matrix-product speed, against n^3 for a solve with the identity.
    h = n // 2
    out = np.zeros_like(lower)
    out[:, :h, :h] = inverse_lower(lower[:, :h, :h])
    out[:, h:, h:] = inverse_lower(lower[:, h:, h:])
    np.matmul(out[:, h:, h:], np.matmul(lower[:, h:, :h], out[:, :h, :h]), out=out[:, h:, :h])
    np.negative(out[:, h:, :h], out=out[:, h:, :h])
    return out


def _cholesky(cov: torch.Tensor) -> torch.Tensor | None:
    """Lower Cholesky factors of (P, d, d) covariances (lower triangles read); None unless every one exists."""
    if numpy_products(cov, dtype=STATS_DTYPE):
        # numpy's stacked Cholesky and products release the GIL and scale over our threads: with
        # inverse_lower the whole factorisation ran 1.45x (d=176) and 1.4x (d=550) torch's Cholesky +
        # triangular solve on 2 AVX2 cores, alternating in one process (benchmarks/README.md).
        try:
            lower = torch.from_numpy(np.linalg.cholesky(cov.numpy()))
        except np.linalg.LinAlgError:
            return None
    else:
        lower, info = torch.linalg.cholesky_ex(cov)
        if int(info.max()) > 0:
            return None
    # OpenBLAS's Cholesky need not flag NaN, and an infinite variance leaves a finite inverse
    # (1/inf = 0): a non-finite diagonal is the same failure.
    return lower if bool(lower.diagonal(dim1=1, dim2=2).isfinite().all()) else None


def _inverse(lower: torch.Tensor) -> torch.Tensor | None:
    """W = L^-1 of lower-triangular (P, d, d) factors; None if it is not finite."""
    if numpy_products(lower, dtype=STATS_DTYPE):
        inverse = torch.from_numpy(inverse_lower(lower.numpy()))
    else:
        eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device).expand_as(lower)
        inverse = torch.linalg.solve_triangular(lower, eye, upper=False)
    return inverse if _all_finite(inverse) else None


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite (numpy's check on the CPU: 7x torch's on a (86, 176, 176) chunk)."""
    return bool(np.isfinite(x.numpy()).all()) if x.device.type == "cpu" else bool(x.isfinite().all())


def precision_factor(stats: GaussianStats, eps: float, chunk: int | None = None) -> list[torch.Tensor]:
    """The stairs (padim.staircase) of U = W^T, float32, with W = L^-1, so that precision = W^T W = U U^T.

    Cholesky rather than LU: the covariances are symmetric positive definite, and batched LU
    inversion is unstable for them when N < d (torch 2.14 reports bogus pivots with >1 thread).
    U is what scoring multiplies by (row vectors x U). Positions are processed in chunks to bound
    the float64 working memory; the dense U is never held for all positions.
    """
    n_pos, dim = stats.mean.shape
    edges = staircase.stair_edges(dim)
    stairs = [torch.empty(n_pos, b, b - a, dtype=torch.float32, device=stats.mean.device)
              for a, b in zip(edges, edges[1:])]
    failed = []

    def factor_slice(sl: slice) -> None:
        lower = _cholesky(stats.lower_covariance(eps, sl))  # the covariances are freed here
        inverse = None if lower is None else _inverse(lower)
        del lower
        if inverse is None:
            failed.append(sl.start)
            return
        upper = inverse.mT  # L^-T = W^T
        for (a, b), blk in zip(zip(edges, edges[1:]), stairs):
            blk[sl] = upper[:, :b, a:b]

    with one_blas_thread:  # numpy's products run in our threads, one BLAS thread each
        run_slices(factor_slice, n_pos, chunk or factor_chunk(dim), stats.mean.device)
    if failed:
        raise InputError("covariance is not positive definite: the features contain NaN/inf or eps is too small")
    return stairs


def precision_cholesky(stats: GaussianStats, eps: float, chunk: int | None = None) -> torch.Tensor:
    """Inverse Cholesky factor W = L^-1 of every covariance (so precision = W^T W), as dense float32."""
    return staircase.to_upper(precision_factor(stats, eps, chunk)).transpose(1, 2)
