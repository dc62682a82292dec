"""Detection and localisation metrics (scikit-learn's ROC AUC)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

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
