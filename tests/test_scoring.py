"""Mahalanobis maps, resizing, smoothing and the whole prediction against float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from padim import PaDiM, staircase
from padim.errors import InputError
from padim.gaussian import GaussianStats, precision_cholesky
from padim.evaluation.synthetic import load_split
from padim.scoring import gaussian_blur, image_scores, mahalanobis_distance, patch_distances, split_mean
from padim.utils.blas import CHOICES as BLAS_CHOICES, ENV_VAR as BLAS_ENV
from padim_runtime import scoring as runtime_scoring

from conftest import TINY


def reference_distances(train: np.ndarray, test: np.ndarray, eps: float) -> np.ndarray:
    """Per-position Mahalanobis distance in float64 with numpy.cov and an explicit inverse.

    train (N, d, h, w), test (B, d, h, w) -> (B, h, w).
    """
    n, d, h, w = train.shape
    out = np.empty((test.shape[0], h, w))
    for i in range(h):
        for j in range(w):
            cov = np.cov(train[:, :, i, j], rowvar=False) + eps * np.eye(d)
            inv = np.linalg.inv(cov)
            diff = test[:, :, i, j] - train[:, :, i, j].mean(0)
            out[:, i, j] = np.sqrt(np.einsum("bi,ij,bj->b", diff, inv, diff))
    return out


# torch: position chunks of 20 positions in 1, 20 or 3 pieces; numpy: 20 positions, or 70 in 8 parts over
# 2 threads, each part in groups of 2 positions (padim_runtime.scoring.whitened_distances).
@pytest.mark.parametrize("blas, chunk, grid", [("torch", None, (4, 5)), ("torch", 1, (4, 5)), ("torch", 7, (4, 5)),
                                               ("numpy", None, (4, 5)), ("numpy", None, (7, 10))])
def test_mahalanobis_matches_float64_reference(blas: str, chunk: int | None, grid: tuple[int, int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLAS_ENV, blas)
    monkeypatch.setenv("PADIM_NUM_THREADS", "2")
    if grid == (7, 10):
        monkeypatch.setattr(runtime_scoring, "GROUP_ROWS", 12)  # 2 positions of 6 images a group
    rng = np.random.default_rng(0)
    train = rng.normal(size=(30, 12, *grid)) * rng.uniform(0.2, 2, size=(1, 12, 1, 1)) + 3.0
    test = rng.normal(size=(6, 12, *grid)) * 1.5 + 3.0
    stats = GaussianStats.empty(grid[0] * grid[1], 12)
    stats.update(torch.from_numpy(train).float().flatten(2).permute(2, 0, 1))
    got = mahalanobis_distance(torch.from_numpy(test).float(), stats.mean, precision_cholesky(stats, 0.01), chunk=chunk)
    ref = reference_distances(train.astype(np.float32).astype(np.float64), test.astype(np.float32).astype(np.float64), 0.01)
    assert np.allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("blas", BLAS_CHOICES)
def test_distances_centre_the_embeddings_in_place_with_either_blas(blas: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # PadimNet.score_positions documents the in-place centring; callers read the frame check before it.
    monkeypatch.setenv(BLAS_ENV, blas)
    rng = np.random.default_rng(5)
    # An offset of 1e4: the float32 mean alone is off by up to 5e-4, which split_mean's low part corrects.
    x = torch.from_numpy((rng.normal(size=(40, 4, 10)) + 1e4).astype(np.float32))  # NUMPY_MIN_BATCH
    mean = torch.from_numpy(rng.normal(size=(40, 10)) + 1e4)
    stairs = staircase.from_upper(torch.eye(10).expand(40, 10, 10).contiguous())
    want = (x.double() - mean[:, None, :]).float()
    dist = patch_distances(x, stairs, *split_mean(mean))
    assert torch.allclose(x, want, rtol=0, atol=2e-6)
    assert torch.allclose(dist, want.double().norm(dim=2).float(), rtol=1e-5)


def test_unknown_scoring_blas_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLAS_ENV, "mkl")
    with pytest.raises(InputError, match=f"{BLAS_ENV}='mkl': expected one of numpy, torch"):
        patch_distances(torch.zeros(2, 4, 3), staircase.from_upper(torch.eye(3).expand(2, 3, 3).contiguous()))


@pytest.mark.parametrize("shape", [(3, 40, 56), (2, 9, 7)])  # 9x7 is smaller than the radius: repeated reflection
def test_gaussian_blur_equals_scipy_reflect(shape: tuple[int, int, int]) -> None:
    maps = np.random.default_rng(1).normal(size=shape)
    got = gaussian_blur(torch.from_numpy(maps), sigma=4.0).numpy()
    ref = np.stack([ndimage.gaussian_filter(m, sigma=4.0, mode="reflect", truncate=4.0) for m in maps])
    assert np.allclose(got, ref, rtol=0, atol=1e-12)


def test_image_score_is_the_map_maximum() -> None:
    maps = torch.zeros(2, 5, 5)
    maps[0, 1, 3], maps[1, 4, 0] = 7.0, 2.5
    assert image_scores(maps).tolist() == [7.0, 2.5]


@pytest.mark.parametrize("blas", BLAS_CHOICES)
def test_whole_prediction_matches_float64_pipeline(texture_set, blas: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLAS_ENV, blas)
    train, test, _ = load_split(texture_set)
    model = PaDiM(**TINY).fit(train)
    pred = model.predict(test)

    def features(paths):
        return model.transform(paths).astype(np.float64)

    dist = reference_distances(features(train), features(test), 0.01)
    up = F.interpolate(torch.from_numpy(dist)[:, None], size=(64, 64), mode="bicubic", align_corners=False)[:, 0].numpy()
    ref_maps = np.stack([ndimage.gaussian_filter(m, sigma=4.0, mode="reflect", truncate=4.0) for m in up])
    scale = np.abs(ref_maps).max()
    assert np.abs(pred.maps - ref_maps).max() / scale < 1e-4
    assert np.allclose(pred.scores, ref_maps.reshape(len(test), -1).max(1), rtol=1e-4)
