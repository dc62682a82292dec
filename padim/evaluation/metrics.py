"""Detection and localisation metrics (scikit-learn's ROC AUC)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from padim import paper
from padim.errors import PadimError


def image_auroc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of image scores against image labels (1 = defective)."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        raise PadimError("image AUROC needs both good and defective images")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def pixel_auroc(masks: Sequence[np.ndarray] | np.ndarray, maps: Sequence[np.ndarray] | np.ndarray) -> float:
    """Area under the ROC curve of every pixel's score against the ground-truth masks."""
    if len(masks) != len(maps):
        raise PadimError(f"{len(masks)} masks for {len(maps)} anomaly maps")
    for i, (mask, amap) in enumerate(zip(masks, maps)):
        if np.shape(mask) != np.shape(amap):
            raise PadimError(f"mask {i} has shape {np.shape(mask)}, its anomaly map {np.shape(amap)}")
    truth = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    if truth.all() or not truth.any():
        raise PadimError("pixel AUROC needs both defect and defect-free pixels")
    values = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in maps])
    return float(roc_auc_score(truth, values))


def pro_curve(masks: Sequence[np.ndarray] | np.ndarray, maps: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve as the official MVTec AD evaluation defines it: (FPR, PRO), FPR ascending.

    Regions are the 8-connected components of every ground-truth mask. At each threshold t (every
    distinct score), PRO(t) is the mean over all regions of all images of the fraction of the region
    scoring >= t, and FPR(t) the fraction of all defect-free pixels of the set scoring >= t. One sort
    and two cumulative sums give the exact curve; the curve starts at (0, 0) and ends at (1, 1).
    """
    from scipy import ndimage

    if len(masks) != len(maps):
        raise PadimError(f"{len(masks)} masks for {len(maps)} anomaly maps")
    structure = np.ones((3, 3), dtype=int)
    fp_weight, pro_weight, scores = [], [], []
    n_ok, n_regions = 0, 0
    for i, (mask, amap) in enumerate(zip(masks, maps)):
        if np.shape(mask) != np.shape(amap):
            raise PadimError(f"mask {i} has shape {np.shape(mask)}, its anomaly map {np.shape(amap)}")
        labels, n = ndimage.label(np.asarray(mask) > 0, structure=structure)
        sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
        ok = labels.ravel() == 0
        per_pixel = np.where(ok, 0.0, 1.0 / sizes[labels.ravel()])  # each region adds up to 1
        fp_weight.append(ok.astype(np.float64))
        pro_weight.append(per_pixel)
        scores.append(np.asarray(amap, dtype=np.float64).ravel())
        n_ok += int(ok.sum())
        n_regions += n
    if n_regions == 0 or n_ok == 0:
        raise PadimError("PRO needs at least one defect region and one defect-free pixel")
    order = np.argsort(-np.concatenate(scores), kind="stable")
    sorted_scores = np.concatenate(scores)[order]
    fpr = np.cumsum(np.concatenate(fp_weight)[order]) / n_ok
    pro = np.cumsum(np.concatenate(pro_weight)[order]) / n_regions
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fpr, pro = np.clip(fpr[last_of_tie], None, 1.0), np.clip(pro[last_of_tie], None, 1.0)
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max], with y at x_max interpolated linearly."""
    keep = x <= x_max
    area = float(np.sum(0.5 * (y[keep][1:] + y[keep][:-1]) * np.diff(x[keep])))
    if not np.any(x == x_max):
        right = int(np.searchsorted(x, x_max, side="right"))
        if 0 < right < len(x):
            x0, x1, y0, y1 = x[right - 1], x[right], y[right - 1], y[right]
            y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_max) * (x_max - x0)
    return area


def au_pro(masks: Sequence[np.ndarray] | np.ndarray, maps: Sequence[np.ndarray] | np.ndarray,
           fpr_limit: float = paper.PRO_FPR_LIMIT) -> float:
    """Normalised area under the PRO curve up to an FPR of fpr_limit (0.3, as in the paper)."""
    fpr, pro = pro_curve(masks, maps)
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit
