"""The frame check: is this frame like the training images at all? (blank, covered, foreign frames)

PaDiM's per-patch Gaussians judge each patch against the patches seen at its position, and the
image score is the map's maximum. A frame with nothing in it slips through: the features of a flat
patch lie near the centre of the training patches' distribution, so a uniform gray frame scored
below every good test image, and black, white and 1x1 frames were all called good. Two checks that
need no defect examples close this gap:

* Contrast (cheap, explainable, works before any calibration): the frame's pixel standard deviation
  (the largest of the three channels', in [0, 1] units, on the preprocessed image the backbone sees)
  far below that of every training image. A covered lens, a dead camera or an empty uniform fixture
  shows sensor noise only; a 1x1 image becomes a uniform frame once resized.
* An image-level Gaussian (the frame score): each frame is summarised by the mean and the standard
  deviation over positions of every channel of the patch embedding the model already computes
  (2d numbers), and the Mahalanobis distance of that summary to the training frames' Gaussian is
  the frame score. It is accumulated in the same streaming pass as the patch Gaussians, with the
  same exact pairwise statistics (padim.gaussian.GaussianStats with a single "position"), so
  partial_fit and merge give the same result as one fit; its threshold comes from the same good
  held-out images as the image threshold, at the same false-positive rate, times a margin
  (padim.calibration.FRAME_MARGIN: the check is a safety net for gross failures, not for drift).

The summary has 2d dimensions (352 for Lite0) and is fitted on tens of images, so its sample
covariance is singular: it is shrunk towards its diagonal by the Oracle Approximating Shrinkage
weight (Chen, Wiesel, Eldar and Hero, 2010), computed on the correlation matrix so that channels of
different scales count alike, and given the model's eps on the diagonal (the regulariser of Eq. 1).
The weight depends on the count and the covariance only, so it follows from the streamed
statistics, with no second pass and no tuning constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from padim.embedding import Blocks
from padim.errors import InputError
from padim.gaussian import STATS_DTYPE, GaussianStats

# A frame is blank when its contrast is below this fraction of the lowest training frame's. A covered
# lens or dead camera shows 1-2 grey levels of noise (std < 0.01); the demo textures' good frames
# have 0.08-0.15. A quarter leaves a good part's contrast a 4x margin for lighting changes, while a
# frame with no structure (std 0) is caught whatever the training contrast.
BLANK_CONTRAST_FRACTION = 0.25

BLANK = "blank frame (no contrast)"
UNLIKE = "frame unlike any training image"
ABOVE = "anomaly score above threshold"


def frame_descriptors(embedding: torch.Tensor, grid: tuple[int, int] | None = None,
                      blocks: Blocks | None = None) -> torch.Tensor:
    """(B, 2d) float64: each channel's mean and standard deviation over the positions of (P, B, d) embeddings.

    With the (h, w) grid and the network's blocks (padim.embedding.native_blocks) a deeper tap's
    channels are read at their own resolution (Lite0: 4.3x fewer numbers); the result is the same.
    """
    p, b, d = embedding.shape
    if grid is None or blocks is None:
        parts = [_moments(embedding.reshape(p, b * d), in_place=False)]
    else:
        on_grid = embedding.view(*grid, b, d)
        parts = [_moments(on_grid[::sh, ::sw, :, c0:c1].reshape(-1, b * (c1 - c0)), in_place=True)
                 for c0, c1, sh, sw in blocks]
    mean = torch.cat([m.view(b, -1) for m, _ in parts], dim=1)
    std = torch.cat([s.view(b, -1) for _, s in parts], dim=1)
    return torch.cat([mean, std], dim=1).to(STATS_DTYPE)


def _moments(flat: torch.Tensor, *, in_place: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation of every column of (n, m) float32 values.

    in_place=True may overwrite `flat` (pass a copy, never an engine's output buffer).
    """
    # Sums over rows as products with a ones vector (two passes: mean, then centred squares):
    # torch.std_mean over the leading dimension ran at 96 ms a batch of 32 at 3136 x 176, this at 34 ms,
    # within 1e-6 relative of float64.
    n = flat.shape[0]
    ones = flat.new_ones(1, n)
    mean = (ones @ flat) / n
    centred = flat.sub_(mean) if in_place and flat._base is None else flat - mean
    return mean[0], ((ones @ centred.square_()) / n).sqrt_()[0]


def frame_contrast(pixels: torch.Tensor, std: tuple[float, float, float]) -> torch.Tensor:
    """(B,) the largest per-channel pixel standard deviation of normalised (B, 3, H, W) frames, in [0, 1] units."""
    scale = torch.tensor(std, dtype=torch.float64, device=pixels.device)
    flat = pixels.flatten(2)
    # E[x^2] - E[x]^2: normalised pixels are O(1), so float32 keeps ~1e-6 (Tensor.std took 17 ms a batch of 32)
    mean = flat.mean(dim=2).to(torch.float64)
    square = (torch.linalg.vector_norm(flat, dim=2).to(torch.float64) ** 2) / flat.shape[2]
    return ((square - mean**2).clamp_min_(0).sqrt() * scale).amax(dim=1)


@dataclass
class FrameStats:
    """Streamed statistics of the training frames: their summaries' Gaussian and their lowest contrast.

    Parameters
    ----------
    gaussian : GaussianStats
        Statistics of the frames' 2d-dimensional summaries (frame_descriptors), at one "position".
    contrast_min : float
        The lowest training frame contrast (inf before the first image).

    Attributes
    ----------
    gaussian, contrast_min
        As given, updated in place by update and merge.
    n : int
        Number of training frames.
    """

    gaussian: GaussianStats
    contrast_min: float

    @classmethod
    def empty(cls, dim: int, device: torch.device | str = "cpu") -> "FrameStats":
        """Statistics of zero frames, for patch embeddings of dimension d (`dim`)."""
        return cls(GaussianStats.empty(1, 2 * dim, device), float("inf"))

    @property
    def n(self) -> int:
        """Number of training frames."""
        return self.gaussian.n

    def update(self, descriptors: torch.Tensor, contrast: torch.Tensor) -> None:
        """Add a batch: the frames' (B, 2d) descriptors (frame_descriptors) and their (B,) contrasts."""
        self.gaussian.update(descriptors.to(self.gaussian.mean.device)[None])
        if contrast.numel():
            self.contrast_min = min(self.contrast_min, float(contrast.min()))

    def merge(self, other: "FrameStats") -> None:
        """Add another set of frame statistics (exact, like GaussianStats.merge)."""
        self.gaussian.merge(other.gaussian)
        self.contrast_min = min(self.contrast_min, other.contrast_min)


def shrunk_covariance(stats: GaussianStats, eps: float) -> torch.Tensor:
    """(D, D) covariance of one-position statistics, shrunk towards its diagonal (OAS weight), plus eps * I."""
    cov = stats.covariance(0.0)[0]
    var = cov.diagonal().clone()
    if stats.n < 2:
        return torch.diag(var) + eps * torch.eye(len(var), dtype=cov.dtype, device=cov.device)
    scale = (var + eps).sqrt()
    weight = oas_weight(cov / scale[:, None] / scale[None, :], stats.n)
    shrunk = cov * (1.0 - weight)
    shrunk.diagonal().copy_(var)
    return shrunk + eps * torch.eye(len(var), dtype=cov.dtype, device=cov.device)


def oas_weight(matrix: torch.Tensor, n: int) -> float:
    """Oracle Approximating Shrinkage weight of a (p, p) covariance estimated from n samples (scikit-learn's form)."""
    p = matrix.shape[0]
    alpha = float((matrix**2).mean())
    mu2 = (float(matrix.trace()) / p) ** 2
    den = (n + 1) * (alpha - mu2 / p)
    return 1.0 if den <= 0 else min(1.0, (alpha + mu2) / den)


@dataclass
class FrameModel:
    """The fitted frame check: the summaries' mean and covariance factor, and the training contrast floor.

    Parameters
    ----------
    mean : torch.Tensor
        (D,) float64 mean of the training frames' summaries.
    cholesky : torch.Tensor
        (D, D) float64 lower Cholesky factor L of their shrunk covariance (covariance = L L^T).
    contrast_min : float
        The lowest training frame contrast.

    Attributes
    ----------
    mean, cholesky, contrast_min
        As given.
    """

    mean: torch.Tensor
    cholesky: torch.Tensor
    contrast_min: float

    @classmethod
    def from_stats(cls, stats: FrameStats, eps: float) -> "FrameModel":
        """Factor the shrunk covariance of the training frames' summaries."""
        lower, info = torch.linalg.cholesky_ex(shrunk_covariance(stats.gaussian, eps))
        if int(info) > 0:
            raise InputError("frame covariance is not positive definite: the features contain NaN/inf or eps is too small")
        return cls(stats.gaussian.mean[0].clone(), lower, stats.contrast_min)

    def scores(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(B,) Mahalanobis distance of each frame's (B, 2d) descriptors (frame_descriptors) to the training frames'."""
        centred = descriptors.to(self.mean.device) - self.mean
        z = torch.linalg.solve_triangular(self.cholesky, centred.T, upper=False)
        return z.norm(dim=0)

    def blank(self, contrast: torch.Tensor) -> torch.Tensor:
        """(B,) True where a frame's contrast is far below every training frame's."""
        return contrast < BLANK_CONTRAST_FRACTION * self.contrast_min

    def describe(self) -> str:
        """One line for `padim info` and messages."""
        return (f"on: blank below contrast {BLANK_CONTRAST_FRACTION * self.contrast_min:.3g} "
                f"(training minimum {self.contrast_min:.3g}), {len(self.mean)}-dim pooled-feature Gaussian")


def frame_reasons(blank: list[bool], unlike: list[bool], above: list[bool]) -> list[str]:
    """Per image, every reason for a defect verdict, '; '-joined ('' for a pass)."""
    return ["; ".join(r for r, hit in zip((BLANK, UNLIKE, ABOVE), flags) if hit) for flags in zip(blank, unlike, above)]
