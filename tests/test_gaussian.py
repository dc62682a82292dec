"""Streaming per-position Gaussians against float64 two-pass references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from padim.errors import PadimError
from padim import gaussian
from padim.gaussian import GaussianStats, pack_lower, precision_cholesky, row_blocks_numel
from padim.utils.blas import CHOICES as BLAS_CHOICES, ENV_VAR as BLAS_ENV


def reference_cov(x: np.ndarray, eps: float) -> np.ndarray:
    """numpy.cov per position (two-pass, float64) + eps*I; x is (N, P, d)."""
    n, p, d = x.shape
    return np.stack([np.cov(x[:, i, :], rowvar=False) + eps * np.eye(d) for i in range(p)])


def streamed(x: np.ndarray, batch: int) -> GaussianStats:
    """Statistics of (N, P, d) samples, fed in float32 batches like real features."""
    n, p, d = x.shape
    stats = GaussianStats.empty(p, d)
    for start in range(0, n, batch):
        chunk = torch.from_numpy(x[start : start + batch]).float().permute(1, 0, 2)
        stats.update(chunk)
    return stats


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# 11 positions, d=60: two row blocks (44 + 16 rows) per product, positions in groups of 2.
@pytest.mark.parametrize("blas", BLAS_CHOICES)
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_streaming_covariance_matches_numpy_cov(batch: int, blas: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLAS_ENV, blas)
    monkeypatch.setattr(gaussian, "GRAM_FLOATS", 2 * 44 * 60)  # groups of 2 positions: 6 groups, the last of 1
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 11, 60)).astype(np.float32) * rng.uniform(0.1, 3.0, size=60).astype(np.float32)
    stats = streamed(x, batch)
    ref = reference_cov(x.astype(np.float64), 0.01)
    assert rel_err(stats.covariance(0.01).numpy(), ref) < 1e-6
    assert rel_err(stats.mean.numpy(), x.astype(np.float64).mean(0)) < 1e-9
    assert stats.n == 37


@pytest.mark.parametrize("blas", BLAS_CHOICES)
def test_large_offset_features_keep_their_covariance(blas: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLAS_ENV, blas)
    # mean 1e3, spread 1e-1: a float32 sum of squares loses every significant digit here
    rng = np.random.default_rng(1)
    x = (1e3 + 1e-1 * rng.normal(size=(200, 4, 8))).astype(np.float32)
    stats = streamed(x, 16)
    ref = reference_cov(x.astype(np.float64), 0.0)
    assert rel_err(stats.covariance(0.0).numpy(), ref) < 1e-6
    naive = (x.sum(0, dtype=np.float32), np.einsum("npi,npj->pij", x, x, dtype=np.float32))
    naive_cov = (naive[1] - np.einsum("pi,pj->pij", naive[0], naive[0]) / 200) / 199
    assert rel_err(naive_cov, ref) > 1e-2  # the trap the streaming update avoids


def test_partial_and_merged_statistics_equal_a_single_fit() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 5, 7))
    a, b = x[:18], x[18:]
    full = streamed(x, 50)
    ab = streamed(a, 7)
    ab.merge(streamed(b, 9))
    ba = streamed(b, 4)
    ba.merge(streamed(a, 18))
    for merged in (ab, ba):
        assert merged.n == full.n
        assert torch.allclose(merged.mean, full.mean, rtol=0, atol=1e-9)
        assert torch.allclose(merged.scatter, full.scatter, rtol=1e-9, atol=1e-9)


def test_sample_order_does_not_matter() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3, 6))
    forward = streamed(x, 8)
    backward = streamed(x[rng.permutation(40)], 8)
    assert torch.allclose(forward.covariance(0.01), backward.covariance(0.01), rtol=1e-9, atol=1e-12)


def test_single_image_gives_eps_identity_and_no_nan() -> None:
    x = np.random.default_rng(4).normal(size=(1, 3, 5))
    stats = streamed(x, 1)
    cov = stats.covariance(0.01)
    assert torch.equal(cov, 0.01 * torch.eye(5, dtype=cov.dtype).expand(3, 5, 5))
    w = precision_cholesky(stats, 0.01)
    assert torch.isfinite(w).all()


def test_zero_images_is_an_error() -> None:
    with pytest.raises(PadimError, match="no training images"):
        GaussianStats.empty(3, 4).covariance(0.01)


def test_merge_refuses_other_shapes() -> None:
    with pytest.raises(PadimError, match="cannot merge"):
        GaussianStats.empty(3, 4).merge(GaussianStats.empty(3, 5))


@pytest.mark.parametrize("blas", BLAS_CHOICES)
@pytest.mark.parametrize("dim", [40, 129])  # one direct solve; halves of 64 and 65 (gaussian.INVERSE_BASE)
def test_precision_cholesky_inverts_the_covariance_with_fewer_images_than_dimensions(
        dim: int, blas: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # N < d on 2 threads: the case where batched LU inversion breaks in torch 2.14
    monkeypatch.setenv(BLAS_ENV, blas)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 150, dim)) * np.linspace(0.2, 3.0, dim)
    stats = streamed(x, 10)
    w = precision_cholesky(stats, 0.01, chunk=32).double()
    cov = reference_cov(x, 0.01)
    assert rel_err((w.transpose(1, 2) @ w).numpy(), np.linalg.inv(cov)) < 1e-5
    assert rel_err(w.numpy(), np.linalg.inv(np.linalg.cholesky(cov))) < 1e-6
    assert torch.all(torch.triu(w, diagonal=1) == 0)


@pytest.mark.parametrize("n", [1, 64, 65, 200])
def test_inverse_lower_equals_the_float64_inverse(n: int) -> None:
    rng = np.random.default_rng(n)
    lower = np.tril(rng.normal(size=(3, n, n))) * 0.3 + np.eye(n) * 2.0
    got = gaussian.inverse_lower(lower)
    assert rel_err(got, np.linalg.inv(lower)) < 1e-12
    assert np.all(np.triu(got, 1) == 0)


@pytest.mark.parametrize("blas", BLAS_CHOICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e6])
def test_a_covariance_that_is_not_positive_definite_is_refused(
        bad: float, blas: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLAS_ENV, blas)
    stats = streamed(np.random.default_rng(0).normal(size=(20, 70, 100)), 20)
    stats.scatter[41, 0] = bad  # position 41's first variance, in the second slice of 32
    with pytest.raises(PadimError, match="not positive definite"):
        precision_cholesky(stats, 0.01, chunk=32)


@pytest.mark.parametrize("dim", [6, 40, 129, 400])  # one block; one; 44, 44, 41 rows; eight blocks of 50
def test_scatter_is_stored_in_row_blocks_and_round_trips_through_the_packed_layout(dim: int) -> None:
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(9, 5, dim)) + 2.0
    stats = streamed(x, 4)
    assert stats.scatter.shape == (5, row_blocks_numel(dim)) and row_blocks_numel(dim) <= dim * dim
    assert dim < 100 or row_blocks_numel(dim) < 0.7 * dim * dim
    assert dim < 8 * 44 or row_blocks_numel(dim) < 0.57 * dim * dim  # large d (WR50): eight blocks
    centred = x - x.mean(0)
    ref = np.einsum("npi,npj->pij", centred, centred)
    assert rel_err(stats.scatter_matrices().numpy(), ref) < 1e-6  # float32 inputs
    packed = stats.packed_scatter(chunk=2)
    assert torch.equal(packed, pack_lower(stats.scatter_matrices()))
    again = GaussianStats.from_packed(stats.n, stats.mean, packed, chunk=3)
    assert torch.equal(again.covariance(0.01), stats.covariance(0.01))
    again.update(torch.from_numpy(x[:2]).float().permute(1, 0, 2))  # the rebuilt blocks keep accumulating
    stats.update(torch.from_numpy(x[:2]).float().permute(1, 0, 2))
    assert torch.allclose(again.covariance(0.01), stats.covariance(0.01), rtol=1e-12, atol=1e-12)
