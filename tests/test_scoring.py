"""Mahalanobis maps, resizing, smoothing and the whole prediction against float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from padim import PaDiM
from padim.gaussian import GaussianStats, precision_cholesky
from padim.evaluation.synthetic import load_split
from padim.scoring import gaussian_blur, image_scores, mahalanobis_distance

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


@pytest.mark.parametrize("chunk", [None, 1, 7])  # position chunks: 20 positions in 1, 20 or 3 pieces
def test_mahalanobis_matches_float64_reference(chunk: int | None) -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(30, 12, 4, 5)) * rng.uniform(0.2, 2, size=(1, 12, 1, 1)) + 3.0
    test = rng.normal(size=(6, 12, 4, 5)) * 1.5 + 3.0
    stats = GaussianStats.empty(20, 12)
    stats.update(torch.from_numpy(train).float().flatten(2).permute(2, 0, 1))
    got = mahalanobis_distance(torch.from_numpy(test).float(), stats.mean, precision_cholesky(stats, 0.01), chunk=chunk)
    ref = reference_distances(train.astype(np.float32).astype(np.float64), test.astype(np.float32).astype(np.float64), 0.01)
    assert np.allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)


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


def test_whole_prediction_matches_float64_pipeline(texture_set) -> None:
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
