"""The upper-triangular factor U = W^T stored as column blocks without the zeros below its diagonal.

Scoring needs x U for row vectors x (the whitened patch, paper Eq. 2). U is upper triangular, so
column block j, U[:, e_j:e_j+1], is zero below row e_j+1: x U[:, e_j:e_j+1] = x[:e_j+1] U[:e_j+1, e_j:e_j+1].
Keeping only those "stairs" stores (k+1)/(2k) of the dense matrix for k blocks (62.5% for Lite0's
d=176, 55% for WR50's d=550) and skips the same share of multiply-adds, in dense batched products.
"""

from __future__ import annotations

from functools import lru_cache

import torch

# Columns per block: about as fast as one dense product at d=100, and faster at d=176 and 550 on
# this AVX-512 CPU (narrower blocks save more memory but cost product calls). benchmarks/README.md.
STAIR_WIDTH = 48


def stair_edges(dim: int, width: int = STAIR_WIDTH) -> list[int]:
    """Column boundaries 0 = e_0 < ... < e_k = dim of k blocks of about `width` columns."""
    k = max(1, round(dim / width))
    return [round(dim * i / k) for i in range(k + 1)]


@lru_cache(maxsize=8)
def _packed_index(dim: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Per block, the index into W's packed lower triangle of each element, and the triangle's mask."""
    edges, out = stair_edges(dim), []
    for a, b in zip(edges, edges[1:]):
        row = torch.arange(b)[:, None]  # row i of U is column i of W
        col = torch.arange(a, b)[None, :]
        inside = row <= col
        out.append((torch.where(inside, col * (col + 1) // 2 + row, 0), inside))
    return tuple(out)


def from_upper(upper: torch.Tensor) -> list[torch.Tensor]:
    """The stairs of upper-triangular (P, d, d) matrices (contiguous copies)."""
    edges = stair_edges(upper.shape[-1])
    return [upper[:, :b, a:b].contiguous() for a, b in zip(edges, edges[1:])]


def to_upper(stairs: list[torch.Tensor]) -> torch.Tensor:
    """The dense upper-triangular (P, d, d) matrices of stairs."""
    dim = stairs[-1].shape[1]
    out = stairs[0].new_zeros(stairs[0].shape[0], dim, dim)
    for a, blk in zip(stair_edges(dim), stairs):
        out[:, : blk.shape[1], a : a + blk.shape[2]] = blk
    return out


def from_packed(packed: torch.Tensor, dim: int, *, dtype: torch.dtype = torch.float32,
                chunk: int = 256) -> list[torch.Tensor]:
    """Stairs of U = W^T from W's packed lower triangles (P, d(d+1)/2), chunk by chunk to bound memory."""
    stairs = []
    for idx, inside in _packed_index(dim):
        idx, inside = idx.to(packed.device), inside.to(packed.device)
        blk = torch.empty(packed.shape[0], *idx.shape, dtype=dtype, device=packed.device)
        for start in range(0, packed.shape[0], chunk):
            part = packed[start : start + chunk][:, idx.flatten()].view(-1, *idx.shape)
            blk[start : start + chunk] = part.masked_fill_(~inside, 0)
        stairs.append(blk)
    return stairs


def to_packed(stairs: list[torch.Tensor]) -> torch.Tensor:
    """W's packed lower triangles (P, d(d+1)/2) from the stairs of U = W^T (inverse of from_packed)."""
    dim = stairs[-1].shape[1]
    out = stairs[0].new_empty(stairs[0].shape[0], dim * (dim + 1) // 2)
    for (idx, inside), blk in zip(_packed_index(dim), stairs):
        inside = inside.to(blk.device)
        out[:, idx.to(blk.device)[inside]] = blk[:, inside]
    return out


def whitened_sq_norms(x: torch.Tensor, stairs: list[torch.Tensor]) -> torch.Tensor:
    """||x_pb U_p||^2 (P, B) for row vectors x (P, B, d), one batched product per block."""
    total = None
    for blk in stairs:
        sq = torch.bmm(x[:, :, : blk.shape[1]], blk.to(x.dtype)).square_().sum(-1)
        total = sq if total is None else total.add_(sq)
    return total
