"""The factor stored as stairs: lossless round trips and the same whitened norms as a dense float64 product."""

from __future__ import annotations

import pytest
import torch

from padim import staircase
from padim.gaussian import pack_lower

DIMS = (1, 2, 47, 48, 73, 100, 176, 550)


@pytest.mark.parametrize("dim", DIMS)
def test_edges_cover_every_column_once_in_blocks_of_about_the_width(dim: int) -> None:
    edges = staircase.stair_edges(dim)
    assert edges[0] == 0 and edges[-1] == dim
    widths = [b - a for a, b in zip(edges, edges[1:])]
    assert all(w >= 1 for w in widths)
    assert max(widths) <= 1.5 * staircase.STAIR_WIDTH or len(widths) == 1


def _upper(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.triu(torch.randn(n, dim, dim, generator=g))


@pytest.mark.parametrize("dim", DIMS)
def test_round_trips_through_stairs_are_exact(dim: int) -> None:
    u = _upper(3, dim)
    stairs = staircase.from_upper(u)
    assert torch.equal(staircase.to_upper(stairs), u)
    packed = pack_lower(u.transpose(1, 2))  # W = U^T, as the model file stores it
    assert torch.equal(staircase.to_packed(stairs), packed)
    from_file = staircase.from_packed(packed, dim, chunk=2)
    assert all(torch.equal(a, b) for a, b in zip(from_file, stairs))


def test_stairs_hold_only_the_triangle_and_its_blocks() -> None:
    dim = 176
    stored = sum(blk.numel() for blk in staircase.from_upper(_upper(1, dim)))
    k = len(staircase.stair_edges(dim)) - 1
    assert stored == pytest.approx(dim * dim * (k + 1) / (2 * k), rel=0.02)
    assert stored < 0.65 * dim * dim


@pytest.mark.parametrize("dim", (5, 100, 176))
def test_whitened_norms_equal_a_dense_float64_product(dim: int) -> None:
    u = _upper(6, dim, seed=1) / dim**0.5
    x = torch.randn(6, 9, dim, generator=torch.Generator().manual_seed(2))
    want = torch.bmm(x.double(), u.double()).square().sum(-1)
    got = staircase.whitened_sq_norms(x, staircase.from_upper(u))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_from_packed_reads_float16_files_into_float32_stairs() -> None:
    u = _upper(2, 60)
    packed = pack_lower(u.transpose(1, 2)).half()
    stairs = staircase.from_packed(packed, 60)
    assert all(blk.dtype == torch.float32 for blk in stairs)
    torch.testing.assert_close(staircase.to_upper(stairs), u.half().float())
