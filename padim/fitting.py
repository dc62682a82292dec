"""The fit's streaming pass: patch embeddings -> per-position and frame statistics, and PCA's pooled ones.

PaDiM.fit, partial_fit and merge run it. A `Shards` object says how one fit's work is split between
processes: each adds its share of the images, the lead process merges everyone's statistics
(padim.distributed.ProcessGroup under torchrun; ONE_PROCESS otherwise).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import torch

from padim.data import Batch, check_finite
from padim.errors import PadimError, PadimWarning
from padim.embedding import Blocks
from padim.frame import FrameStats, frame_contrast, frame_descriptors
from padim.gaussian import BatchBuffer, GaussianStats
from padim.network import PadimNet

if TYPE_CHECKING:
    from padim.model import PaDiM

# Positions-first (P, B, d) embeddings of each batch, as PaDiM._embeddings yields them.
Embeddings = Iterable[tuple[Batch, torch.Tensor]]


class Shards(Protocol):
    """How one fit shares its images and statistics between processes."""

    def mine(self, items: list) -> list:
        """This process's share of the images."""

    def merge(self, stats: GaussianStats) -> GaussianStats | None:
        """Every process's statistics merged, on the lead process; None on the others."""

    def merge_frames(self, frames: FrameStats) -> FrameStats | None:
        """Every process's frame statistics merged, on the lead process; None on the others."""

    def share(self, tensor: torch.Tensor) -> torch.Tensor:
        """The lead process's tensor, on every process (the others pass one of the same shape)."""


class OneProcess:
    """The Shards of a fit in one process: every image is its own, nothing to merge or share."""

    def mine(self, items: list) -> list:
        """All the images."""
        return items

    def merge(self, stats: GaussianStats) -> GaussianStats:
        """The statistics themselves."""
        return stats

    def merge_frames(self, frames: FrameStats) -> FrameStats:
        """The frame statistics themselves."""
        return frames

    def share(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor itself."""
        return tensor


ONE_PROCESS = OneProcess()


def _finite(embeddings: Embeddings) -> Embeddings:
    """The embeddings, refusing a batch with NaN/inf in any image's embedding (naming the image)."""
    for batch, emb in embeddings:
        # A NaN/inf anywhere in an image's embedding makes its sum non-finite: one reduction, not a mask.
        check_finite(emb.sum(dim=(0, 2)), batch)
        yield batch, emb


def accumulate(embeddings: Embeddings, stats: GaussianStats, frame: FrameStats | None,
               std: tuple[float, float, float], *, grid: tuple[int, int] | None = None,
               blocks: Blocks | None = None) -> GaussianStats:
    """Add every batch to the per-position statistics (and the frame statistics, given the pixels' std).

    `grid` and `blocks` (PadimNet.grid, PadimNet.descriptor_blocks) let the frame descriptors read
    each tap at its own resolution.
    """
    buffer = BatchBuffer(stats)
    for batch, emb in _finite(embeddings) if frame is None else embeddings:
        if frame is not None:  # before the buffer: the same embeddings, in the same pass
            descriptors = frame_descriptors(emb, grid, blocks)
            # Every embedding value is a copy of a value the descriptors' means add up, so they are
            # non-finite exactly when the embedding is: the check costs no pass of its own.
            check_finite(descriptors, batch)
            frame.update(descriptors, frame_contrast(batch.pixels, std))
        buffer.add(emb)
    buffer.flush()
    return stats


def pooled_stats(embeddings: Embeddings, dim: int, device: torch.device | str) -> GaussianStats:
    """Mean and scatter of all patch embeddings (of dimension dim) of all images, pooled over positions (for PCA)."""
    pooled: GaussianStats | None = None
    for _, emb in _finite(embeddings):
        x = emb.reshape(1, -1, emb.shape[2])  # every patch of every image
        pooled = pooled or GaussianStats.empty(1, x.shape[2], emb.device)
        pooled.update(x)
    return pooled or GaussianStats.empty(1, dim, device)


def fit_projection(net: PadimNet, embeddings: Embeddings, shards: Shards, k: int) -> None:
    """Set the network's projection to the k leading principal components of every shard's embeddings."""
    dim = int(net.channel_indices.numel())
    pooled = shards.merge(pooled_stats(embeddings, dim, net.channel_indices.device))
    if pooled is None:  # not the lead process: the components arrive in this tensor
        components = torch.empty(dim, k, device=net.channel_indices.device)
    else:
        _, vectors = torch.linalg.eigh(pooled.covariance(0.0)[0])  # ascending eigenvalues
        components = vectors[:, -k:].flip(1).to(torch.float32).contiguous()
    net.projection = shards.share(components)


def merged_frames(mine: FrameStats | None, theirs: FrameStats | None) -> FrameStats | None:
    """Two models' frame statistics merged (into mine); if either has none (an old file), None."""
    if mine is not None and theirs is not None:
        mine.merge(theirs)
        return mine
    if mine is not None or theirs is not None:
        warnings.warn("one merged model has no frame statistics (saved before the frame check): "
                      "the merged model's frame check is off", PadimWarning, stacklevel=3)
    return None


def _identity(model: PaDiM) -> dict[str, Any]:
    """What two models must share to be merged."""
    return {
        "backbone": model.backbone_.name,
        "layers": model.backbone_.layers,
        "reduction": model.reduction,
        "weights": model.backbone_.source.sha256,
        "preprocessing": model.preprocessing.to_dict(),
        "feature grid": model.feature_shape_,
        "eps": float(model.eps),
    }


def check_mergeable(mine: PaDiM, theirs: PaDiM) -> None:
    """Refuse two fitted models whose statistics do not describe the same embeddings (PaDiM.merge)."""
    a, b = _identity(mine), _identity(theirs)
    for key in a:
        if a[key] != b[key]:
            raise PadimError(f"cannot merge models with different {key}: {a[key]!r} vs {b[key]!r}")
    if not torch.equal(mine.channel_indices_, theirs.channel_indices_):
        raise PadimError("cannot merge models with different Rd channel selections (different seeds?)")
    if not torch.equal(mine.net_.projection, theirs.net_.projection):
        raise PadimError("cannot merge PCA models with different components (fit the PCA once, then partial_fit)")
