"""Per-position multivariate Gaussians (paper Eq. 1), accumulated in one streaming pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from padim.errors import PadimError

STATS_DTYPE = torch.float64


@dataclass
class GaussianStats:
    """Count, mean and scatter (sum of centred outer products) of embeddings at every position.

    Batches and partial statistics are combined with the pairwise update of Chan, Golub and
    LeVeque (1979): exact in any order, and free of the cancellation a raw sum of squares suffers
    when features have a large offset.
    """

    n: int
    mean: torch.Tensor  # (P, d) float64
    scatter: torch.Tensor  # (P, d, d) float64

    @classmethod
    def empty(cls, n_positions: int, dim: int, device: torch.device | str = "cpu") -> "GaussianStats":
        """Statistics of zero samples."""
        return cls(
            0,
            torch.zeros(n_positions, dim, dtype=STATS_DTYPE, device=device),
            torch.zeros(n_positions, dim, dim, dtype=STATS_DTYPE, device=device),
        )

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of embeddings given as (P, B, d)."""
        x64 = torch.empty(x.shape, dtype=STATS_DTYPE, device=x.device).copy_(x)  # one contiguous copy
        batch_mean = x64.mean(dim=1)
        self._combine(x.shape[1], batch_mean, x64.sub_(batch_mean[:, None, :]))

    def merge(self, other: "GaussianStats") -> None:
        """Add another set of statistics over the same positions and dimensions."""
        if other.mean.shape != self.mean.shape:
            raise PadimError(f"cannot merge statistics of shape {tuple(other.mean.shape)} into {tuple(self.mean.shape)}")
        self.scatter.add_(other.scatter.to(self.scatter.device))
        self._combine(other.n, other.mean.to(self.mean.device), None)

    def _combine(self, n_b: int, mean_b: torch.Tensor, centred_b: torch.Tensor | None) -> None:
        """Chan et al. update with n_b samples of mean mean_b (and, for a batch, its centred samples).

        scatter += C^T C + (n_a n_b / n) delta delta^T is done as one product [C; s delta]^T [C; s delta]
        with s = sqrt(n_a n_b / n): a single pass over the (P, d, d) scatter, which is what costs.
        """
        if n_b == 0:
            return
        n_a, n = self.n, self.n + n_b
        delta = mean_b - self.mean
        rows = delta[:, None, :] * math.sqrt(n_a * n_b / n)
        if centred_b is not None:
            rows = torch.cat([centred_b, rows], dim=1)
        self.scatter.baddbmm_(rows.transpose(1, 2), rows)
        self.mean.add_(delta, alpha=n_b / n)
        self.n = n

    def covariance(self, eps: float, positions: slice = slice(None)) -> torch.Tensor:
        """Regularised covariance scatter/(N-1) + eps*I (Eq. 1); with a single sample it is eps*I."""
        if self.n == 0:
            raise PadimError("no training images: the Gaussians are undefined")
        scatter = self.scatter[positions]
        cov = scatter / (self.n - 1) if self.n > 1 else torch.zeros_like(scatter)
        return cov + eps * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)


def precision_cholesky(stats: GaussianStats, eps: float, chunk: int = 256) -> torch.Tensor:
    """Inverse Cholesky factor W = L^-1 of every covariance (so precision = W^T W), as float32.

    Cholesky rather than LU: the covariances are symmetric positive definite, and batched LU
    inversion is unstable for them when N < d (torch 2.14 reports bogus pivots with >1 thread).
    Positions are processed in chunks to bound the float64 working memory.
    """
    n_pos, dim = stats.mean.shape
    out = torch.empty(n_pos, dim, dim, dtype=torch.float32, device=stats.mean.device)
    for start in range(0, n_pos, chunk):
        sl = slice(start, min(start + chunk, n_pos))
        cov = stats.covariance(eps, sl)
        lower, info = torch.linalg.cholesky_ex(cov)
        if int(info.max()) > 0:
            raise PadimError("covariance is not positive definite: the features contain NaN/inf or eps is too small")
        eye = torch.eye(dim, dtype=cov.dtype, device=cov.device).expand_as(cov)
        out[sl] = torch.linalg.solve_triangular(lower, eye, upper=False).to(torch.float32)
    return out
