"""Patch embeddings: tapped maps resized to the first tap's grid, concatenated, optionally Rd-reduced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from padim.errors import InputError


def random_channels(n_total: int, n_features: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of n_features channels drawn without replacement (the paper's Rd, Section III-A)."""
    if n_features is None or n_features == n_total:
        return torch.arange(n_total)
    if not 1 <= n_features <= n_total:
        raise InputError(f"n_features must be between 1 and {n_total} (the embedding size), got {n_features}")
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


def nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each of n_out positions under PyTorch's 'nearest' resize of n_in positions."""
    src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
    return F.interpolate(src, size=(n_out, 1), mode="nearest").view(n_out).long()


def embed_positions(maps: list[torch.Tensor], kept: list[torch.Tensor]) -> torch.Tensor:
    """The embeddings of `embed`, positions first: (h*w, B, d), the layout the per-position Gaussians use.

    The nearest-neighbour upsampling of a deeper map is a repeat of each patch over an s x s block
    of the first grid; for integer ratios it is written as a broadcast copy (no resize kernel, no
    intermediate upsampled map), otherwise as a gather with PyTorch's nearest indices. In eager mode
    each tap is copied straight into its channels of one output tensor (no per-tap copies to concatenate).
    """
    b = maps[0].shape[0]
    h, w = maps[0].shape[-2:]
    grids = [_on_grid(fmap, idx, h, w) for fmap, idx in zip(maps, kept) if idx.numel()]
    if torch.jit.is_tracing():  # a graph: concatenation, which runtimes plan their own memory for
        return torch.cat([g.reshape(h * w, b, g.shape[-1]) for g in grids], dim=2)
    d = sum(g.shape[-1] for g in grids)
    out = torch.empty(h, w, b, d, dtype=maps[0].dtype, device=maps[0].device)
    c0 = 0
    for g in grids:
        c = g.shape[-1]
        out[..., c0 : c0 + c].view(g.shape).copy_(g)
        c0 += c
    return out.view(h * w, b, d)


def _on_grid(fmap: torch.Tensor, idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The kept channels of one tap as a view on the (h, w) grid: (fh, sh, fw, sw, B, c) or (h, w, B, c)."""
    part = fmap.index_select(1, idx.to(fmap.device)) if idx.numel() < fmap.shape[1] else fmap
    b, c, fh, fw = part.shape
    grid = part.permute(2, 3, 0, 1)  # (fh, fw, B, c)
    if h % fh == 0 and w % fw == 0:
        return grid[:, None, :, None].expand(fh, h // fh, fw, w // fw, b, c)
    grid = grid.index_select(0, nearest_index(fh, h).to(grid.device))
    return grid.index_select(1, nearest_index(fw, w).to(grid.device))


# Per tap: (first channel, end channel, row step, column step) in the embeddings (native_blocks).
Blocks = tuple[tuple[int, int, int, int], ...]


def native_blocks(kept: list[torch.Tensor], tap_grids: list[tuple[int, int]], grid: tuple[int, int]) -> Blocks:
    """Per tap with kept channels: (first, end) channel in the embedding and the (row, column) step that
    reads its values back once each from the (h, w) grid (a deeper tap repeated over s x s blocks: step s).

    Reading every s-th position of such a tap's channels gives the multiset of its values with every
    multiplicity divided by s*s, so means and standard deviations over positions are unchanged. A
    non-integer ratio (PyTorch's nearest gather repeats rows unevenly) gets step 1: every position.
    """
    blocks, c0 = [], 0
    for idx, (fh, fw) in zip(kept, tap_grids):
        if not idx.numel():
            continue
        steps = [n // f if n % f == 0 else 1 for n, f in zip(grid, (fh, fw))]
        blocks.append((c0, c0 + int(idx.numel()), steps[0], steps[1]))
        c0 += int(idx.numel())
    return tuple(blocks)


def positions_to_maps(embedding: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Positions-first (h*w, B, d) embeddings as (B, d, h, w) maps (a copy).

    Always a copy: the permuted reshape alone is a view, and OpenVINO/ONNX Runtime hand out their
    output buffers, which the next batch of the same size overwrites (transform() returned the last
    batch's embeddings for every earlier batch of that size).
    """
    maps = embedding.permute(1, 2, 0).reshape(embedding.shape[1], embedding.shape[2], *grid)
    return maps.clone(memory_format=torch.contiguous_format)
