"""Metrics: hand-computed toy cases and an independent brute-force AU-PRO."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from padim.errors import PadimError
from padim.evaluation.metrics import area_up_to, au_pro, image_auroc, pixel_auroc, pro_curve


def brute_force_au_pro(masks, maps, limit: float = 0.3) -> float:
    """Loop over every distinct threshold; regions by 8-connectivity; trapezoid with interpolation."""
    regions = []
    ok_scores = []
    for mask, amap in zip(masks, maps):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labels == k] for k in range(1, n + 1)]
        ok_scores.append(amap[labels == 0])
    ok = np.concatenate(ok_scores)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        points.append((np.mean(ok >= t), np.mean([np.mean(r >= t) for r in regions])))
    points.append((1.0, 1.0))
    x, y = np.array(points).T
    area = 0.0
    for i in range(1, len(x)):
        if x[i] <= limit:
            area += 0.5 * (y[i] + y[i - 1]) * (x[i] - x[i - 1])
        elif x[i - 1] < limit:
            y_lim = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
            area += 0.5 * (y[i - 1] + y_lim) * (limit - x[i - 1])
    return area / limit


def test_two_regions_of_different_size_count_equally() -> None:
    mask = np.zeros((1, 10, 10), bool)
    mask[0, 0:2, 0:2] = True  # 4-pixel region, found
    mask[0, 5:9, 5:9] = True  # 16-pixel region, half found
    amap = np.zeros((1, 10, 10))
    amap[0, 0:2, 0:2] = 1.0
    amap[0, 5:7, 5:9] = 1.0
    fpr, pro = pro_curve(mask, amap)
    # at t = 1: no false positive, PRO = (1 + 0.5) / 2
    assert fpr[1] == 0.0 and pro[1] == pytest.approx(0.75)
    # then straight to (1, 1): PRO(0.3) = 0.825, area 0.3 * (0.75 + 0.825) / 2, over 0.3
    assert au_pro(mask, amap) == pytest.approx(0.7875)


def test_ties_are_one_threshold() -> None:
    mask = np.array([[[1, 0, 0, 0]]], bool)
    amap = np.array([[[0.5, 0.5, 0.2, 0.1]]])
    fpr, pro = pro_curve(mask, amap)
    # at t = 0.5 the region and one of three good pixels are above: one point, not two
    assert list(zip(fpr, pro))[:2] == [(0.0, 0.0), (pytest.approx(1 / 3), 1.0)]


def test_region_fully_missed_halves_pro() -> None:
    mask = np.zeros((2, 6, 6), bool)
    mask[0, 1:3, 1:3] = True
    mask[1, 3:5, 3:5] = True
    amap = np.zeros((2, 6, 6))
    amap[0, 1:3, 1:3] = 2.0  # second image's region scores 0 like the background
    fpr, pro = pro_curve(mask, amap)
    assert (fpr[1], pro[1]) == (0.0, 0.5)
    assert au_pro(mask, amap) == pytest.approx((0.5 + 0.65) / 2)


def test_diagonal_pixels_form_one_region() -> None:
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 1, 1] = mask[0, 2, 2] = mask[0, 2, 3] = True  # 8-connected: one region of 3 pixels
    amap = np.zeros((1, 5, 5))
    amap[0, 1, 1] = 1.0
    fpr, pro = pro_curve(mask, amap)
    assert pro[1] == pytest.approx(1 / 3)  # 4-connectivity would give (1 + 0) / 2
    mask[0, 4, 0] = True  # a separate region, touching nothing
    fpr, pro = pro_curve(mask, amap)
    assert pro[1] == pytest.approx((1 / 3 + 0) / 2)


def test_interpolated_end_point() -> None:
    x, y = np.array([0.0, 0.2, 0.4, 1.0]), np.array([0.0, 0.6, 1.0, 1.0])
    # 0..0.2: 0.06; 0.2..0.3 with y(0.3) = 0.8: 0.07
    assert area_up_to(x, y, 0.3) == pytest.approx(0.13)


@pytest.mark.parametrize("seed", range(5))
def test_au_pro_agrees_with_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 16, 16), bool)
    for m in masks[1:]:
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, 12, size=2)
            m[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    maps = np.round(maps, 1)  # plenty of ties
    assert au_pro(masks, maps) == pytest.approx(brute_force_au_pro(masks, maps), abs=1e-9)


def test_au_pro_is_fast_on_a_category_sized_set() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((200, 224, 224), bool)
    masks[100:, 50:90, 60:120] = True
    maps = rng.random(masks.shape, dtype=np.float32) + masks
    start = time.perf_counter()
    value = au_pro(masks, maps)
    assert 0.0 < value <= 1.0
    assert time.perf_counter() - start < 30  # generous: it takes a few seconds; a per-threshold loop takes hours


def test_aurocs_and_their_errors() -> None:
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5
    masks = np.array([[[0, 1], [0, 0]]], bool)
    assert pixel_auroc(masks, np.array([[[0.0, 0.9], [0.1, 0.2]]])) == 1.0
    with pytest.raises(PadimError, match="both good and defective"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(PadimError, match="shape"):
        pixel_auroc(masks, np.zeros((1, 3, 3)))
