"""The pure torch PaDiM network: normalised images -> anomaly maps and image scores (no files, no fitting)."""

from __future__ import annotations

import torch
from torch import nn

from padim import staircase
from padim.backbone import Backbone, spec_for
from padim.embedding import Blocks, native_blocks, positions_to_maps, random_channels, split_by_tap
from padim.engine import TapEmbedding
from padim.errors import NotFittedError, PadimError
from padim.scoring import image_scores, mahalanobis_distance, patch_distances, smooth_maps, smoothing_matrices, split_mean


class PadimNet(nn.Module):
    """Pure torch PaDiM: normalised (B, 3, H, W) images -> anomaly maps (B, H, W) and image scores (B,).

    Its buffers are the only copy of the fitted state; the estimator (padim.model.PaDiM) reads them
    and keeps none of its own: `channel_indices` (the Rd channels, or every channel under PCA, int64),
    `projection` (PCA components (D, d), empty without PCA), `mean` (P, d) float64 and `factor_0` ...
    `factor_{k-1}`, the stairs (padim.staircase) of U = W^T, float32, with W = L^-1 the inverse
    Cholesky factor (precision = W^T W). `mean_hi`/`mean_lo` and `smooth_h`/`smooth_w` are derived
    from `mean` and from the grid and sigma, and are not saved.
    """

    def __init__(self, backbone: Backbone, channel_indices: torch.Tensor, sigma: float,
                 size: tuple[int, int]) -> None:
        super().__init__()
        self.features = TapEmbedding(backbone.extractor, split_by_tap(channel_indices, backbone.channels))
        self.sigma = float(sigma)
        self.size = tuple(size)
        with torch.no_grad():
            tap_grids = [tuple(m.shape[-2:]) for m in backbone.extractor(torch.zeros(1, 3, *self.size))]
        self.grid = tap_grids[0]
        self._native_blocks = native_blocks(self.features.kept, tap_grids, self.grid)
        m_h, m_w = smoothing_matrices(self.grid, self.size, self.sigma)
        self.register_buffer("channel_indices", channel_indices.clone())
        self.register_buffer("mean", torch.empty(0, dtype=torch.float64))
        self.n_stairs = 0
        self.register_buffer("projection", torch.empty(0))  # PCA components (D, d), when used
        self.register_buffer("mean_hi", torch.empty(0), persistent=False)
        self.register_buffer("mean_lo", torch.empty(0), persistent=False)
        self.register_buffer("smooth_h", m_h, persistent=False)
        self.register_buffer("smooth_w", m_w, persistent=False)

    @property
    def extractor(self) -> nn.Module:
        """The tapped backbone."""
        return self.features.extractor

    @property
    def factor(self) -> list[torch.Tensor]:
        """The stairs of U = W^T (padim.staircase), one buffer each."""
        return [getattr(self, f"factor_{j}") for j in range(self.n_stairs)]

    def set_gaussians(self, mean: torch.Tensor, stairs: list[torch.Tensor]) -> None:
        """Install fitted means (P, d) and the stairs of the factors U."""
        self.mean = mean
        for j in range(len(stairs), self.n_stairs):
            delattr(self, f"factor_{j}")
        for j, blk in enumerate(stairs):
            self.register_buffer(f"factor_{j}", blk)
        self.n_stairs = len(stairs)
        self.mean_hi, self.mean_lo = split_mean(mean)

    @property
    def descriptor_blocks(self) -> Blocks | None:
        """Where each tap's channels lie in the embeddings, for padim.frame.frame_descriptors (None under PCA)."""
        return None if self.projection.numel() else self._native_blocks

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the PCA projection, if any, to positions-first (P, B, D) embeddings."""
        return torch.matmul(x, self.projection) if self.projection.numel() else x

    def embed_positions(self, x: torch.Tensor) -> torch.Tensor:
        """Positions-first patch embeddings (P, B, d) of a normalised batch."""
        return self.project(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, d, h, w) of a normalised batch."""
        return positions_to_maps(self.embed_positions(x), self.grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps at the input's size and image scores."""
        return self.score_positions(self.embed_positions(x))

    def score_positions(self, embedding: torch.Tensor, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, H, W) and image scores (B,) from positions-first embeddings (centred in place).

        `threads` caps the CPU threads of the distances (default: this process's CPUs).
        """
        dist = patch_distances(embedding, self.factor, self.mean_hi, self.mean_lo, threads=threads)
        maps = smooth_maps(dist.T.reshape(embedding.shape[1], *self.grid), self.smooth_h, self.smooth_w)
        return maps, image_scores(maps)

    def patch_distances(self, embedding: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance (B, h, w) of every patch of (B, d, h, w) embeddings to its position's Gaussian."""
        return mahalanobis_distance(embedding, self.mean, staircase.to_upper(self.factor).transpose(1, 2))


def draw_channels(backbone: Backbone, n_features: int | str | None, reduction: str,
                  seed: int) -> tuple[torch.Tensor, int | None]:
    """The channels a network keeps (the paper's seeded Rd draw) and, with PCA, its number of components.

    n_features=None is the backbone's Rd default, "all" every channel; PCA keeps every channel and
    projects them on n_features components.
    """
    n_total = sum(backbone.channels)
    if n_features is None:
        n_features = spec_for(backbone.name).n_features
    elif n_features == "all":
        n_features = None
    if reduction != "pca":
        return random_channels(n_total, n_features, seed), None  # type: ignore[arg-type]
    if n_features is None or not 1 <= int(n_features) <= n_total:
        raise PadimError(f"reduction='pca' needs n_features between 1 and {n_total}, got {n_features!r}")
    return random_channels(n_total, None, seed), int(n_features)


class FittedNetworkViews:
    """An estimator's fitted attributes as read-only views of its PadimNet's buffers (`net_`): no copies."""

    net_: PadimNet
    n_samples_seen_: int

    def _is_fitted(self) -> bool:
        """Whether fit (or load) has given the network its Gaussians."""
        return getattr(self, "n_samples_seen_", 0) > 0

    def _require_fitted(self) -> None:
        """Raise NotFittedError before fit or load."""
        if not self._is_fitted():
            raise NotFittedError("this PaDiM model is not fitted yet: call fit() first")

    @property
    def channel_indices_(self) -> torch.Tensor:
        """Sorted indices (int64) of the backbone channels the embeddings keep (the network's buffer)."""
        return self.net_.channel_indices

    @property
    def components_(self) -> torch.Tensor | None:
        """PCA components (D, d), float32, the embeddings are projected on (the network's buffer); None without."""
        projection = self.net_.projection
        return projection if projection.numel() else None

    @property
    def feature_shape_(self) -> tuple[int, int]:
        """The feature grid (h, w): one Gaussian per position."""
        return tuple(self.net_.grid)  # type: ignore[return-value]

    @property
    def mean_(self) -> torch.Tensor:
        """Per-position means (P, d), float64 (the network's buffer)."""
        self._require_fitted()
        return self.net_.mean

    @property
    def precision_cholesky_(self) -> torch.Tensor:
        """Inverse Cholesky factors W (P, d, d), precision = W^T W: built densely on access from the network's stairs."""
        self._require_fitted()
        return staircase.to_upper(self.net_.factor).transpose(1, 2)

    @property
    def embedding_dim_(self) -> int:
        """Dimension d of the patch embeddings the Gaussians model."""
        self._require_fitted()
        return int(self.mean_.shape[1])
