"""Patch embeddings: tapped maps resized to the first tap's grid, concatenated, optionally Rd-reduced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from padim.errors import PadimError


def random_channels(n_total: int, n_features: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of n_features channels drawn without replacement (the paper's Rd, Section III-A)."""
    if n_features is None or n_features == n_total:
        return torch.arange(n_total)
    if not 1 <= n_features <= n_total:
        raise PadimError(f"n_features must be between 1 and {n_total} (the embedding size), got {n_features}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=generator)[:n_features].sort().values


def split_by_tap(channel_indices: torch.Tensor, channels: tuple[int, ...]) -> list[torch.Tensor]:
    """Per tap, the kept channels as indices local to that tap's map."""
    bounds = torch.tensor((0, *channels)).cumsum(0)
    return [
        channel_indices[(channel_indices >= lo) & (channel_indices < hi)] - lo
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist())
    ]


def embed(maps: list[torch.Tensor], kept: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate the kept channels of every map on the first map's grid: (B, d, h, w).

    Deeper maps are upsampled with nearest neighbours, so every patch of a deeper map is repeated
    over the positions it covers, like the reference implementation's unfold-based concatenation.
    Channels are selected before upsampling: the dropped ones are never resized.
    """
    grid = maps[0].shape[-2:]
    parts = []
    for fmap, idx in zip(maps, kept):
        if idx.numel() == 0:
            continue
        part = fmap.index_select(1, idx.to(fmap.device)) if idx.numel() < fmap.shape[1] else fmap
        if part.shape[-2:] != grid:
            part = F.interpolate(part, size=grid, mode="nearest")
        parts.append(part)
    return torch.cat(parts, dim=1)
