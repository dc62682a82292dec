"""The runtime's predictor: images -> raw score, normalised score, decision and reason, and maps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from padim_runtime.bundle import Bundle, BundleError, read_bundle
from padim_runtime.engine import Engine, _threads
from padim_runtime.image import decode, describe, list_images, preprocess, to_original
from padim_runtime.scoring import Scorer

REASON_SCORE = "anomaly score above threshold"


@dataclass
class Result:
    """One image's answer."""

    name: str
    score: float
    normalized_score: float | None
    defective: bool | None
    reason: str
    anomaly_map: np.ndarray  # at the original size, NaN where the model did not look
    frame_score: float | None = None  # the frame check's distance (None: the bundle has no frame check)


def _logistic(x: float, centre: float, spread: float) -> float:
    """The full package's normalisation: threshold -> 0.5, monotone."""
    z = min(60.0, max(-60.0, (x - centre) / spread))
    return float(1.0 / (1.0 + np.exp(-z)))


class Predictor:
    """A loaded bundle: `predict` scores images with the same answers as the full package."""

    def __init__(self, bundle: Bundle, engine: str = "auto", batch_size: int = 32) -> None:
        self.bundle, self.batch_size = bundle, batch_size
        m = bundle.manifest
        self.spec = m["preprocessing"]
        self.engine = Engine(bundle.graph, engine)
        self.scorer = Scorer(bundle.mean, bundle.factor, bundle.smooth_h, bundle.smooth_w, tuple(m["grid"]), _threads())
        self.calibration = m.get("calibration")
        self.reasons = (m.get("frame") or {}).get("reasons") or ["blank frame (no contrast)",
                                                                  "frame unlike any training image", REASON_SCORE]

    @property
    def image_threshold(self) -> float | None:
        """The calibrated image threshold, or None."""
        return None if self.calibration is None else float(self.calibration["image_threshold"])

    def _spread(self, threshold: float) -> float:
        """Scale of the normalisation (padim.calibration._spread)."""
        scores = np.asarray(self.calibration["image_scores"], np.float32)
        spread = float(np.std(scores)) if len(scores) > 1 else 0.0
        return spread if spread > 0 else max(abs(threshold) * 0.1, 1e-6)

    def predict(self, images: Any, image_threshold: float | None = None) -> list[Result]:
        """Results for a folder, a file, or a list of paths / PIL images / uint8 arrays, in order."""
        return list(self.iter_predict(images, image_threshold))

    def iter_predict(self, images: Any, image_threshold: float | None = None) -> Iterator[Result]:
        """Results batch by batch (memory flat in the number of images)."""
        self._threshold(image_threshold)  # a bad override fails before any decoding
        items = _items(images)
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            # decoding (Pillow) and resizing (numpy matrix products) release the GIL: one thread per CPU
            rgbs = list(self.scorer.pool.map(lambda item: decode(item[1], item[0]), batch))
            yield from self.score_decoded(rgbs, [name for name, _ in batch], image_threshold)

    def _threshold(self, image_threshold: float | None) -> float | None:
        """The threshold in force: a finite override, else the calibrated one (None: uncalibrated)."""
        if image_threshold is not None and not np.isfinite(image_threshold):
            raise BundleError(f"image threshold must be a finite number, got {image_threshold!r}")
        return self.image_threshold if image_threshold is None else float(image_threshold)

    def score_decoded(self, rgbs: list[np.ndarray], names: list[str], image_threshold: float | None = None,
                      map_sizes: list[tuple[int, int] | None] | None = None) -> list[Result]:
        """Results for one batch of decoded (3, H, W) float32 images in [0, 1] (`decode`'s output).

        Each map is brought to its image's size, or to `map_sizes[i]` when given (None: the model's grid).
        """
        threshold = self._threshold(image_threshold)
        spread = None if threshold is None or self.calibration is None else self._spread(threshold)
        x = np.stack(list(self.scorer.pool.map(lambda rgb: preprocess(rgb, self.spec), rgbs)))
        emb = self.engine(x)
        if self.bundle.projection is not None:
            emb = np.matmul(emb, self.bundle.projection)
        blank, unlike, frame_scores = self._frame_check(x, emb)  # before scoring centres emb in place
        maps, scores = self.scorer(emb)
        sizes = map_sizes if map_sizes is not None else [rgb.shape[1:] for rgb in rgbs]
        results = []
        for b, (name, amap, score, size) in enumerate(zip(names, maps, scores, sizes)):
            if not np.isfinite(score):
                raise BundleError(f"{name}: anomaly score is NaN/inf (NaN/inf features or bundle tensors)")
            normalized = defective = None
            above = threshold is not None and bool(score > threshold)
            if threshold is not None:
                defective = above or bool(blank[b]) or bool(unlike[b])
                if spread is not None:
                    normalized = _logistic(float(score), threshold, spread)
            reason = "; ".join(r for r, hit in zip(self.reasons, (blank[b], unlike[b], above)) if hit)
            results.append(Result(name, float(score), normalized, defective, reason,
                                  amap if size is None else to_original(amap, self.spec, tuple(size)),
                                  None if frame_scores is None else float(frame_scores[b])))
        return results

    def _frame_check(self, x: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(blank, unlike, frame scores) of a batch, as padim.frame computes them (all False without one)."""
        n = x.shape[0]
        frame = self.bundle.manifest.get("frame")
        if frame is None:
            return np.zeros(n, bool), np.zeros(n, bool), None
        std = np.asarray(self.spec["std"], np.float64)
        flat = x.reshape(n, 3, -1)  # the same formulas as padim.frame (E[x^2] - E[x]^2; ones-vector products)
        square = np.einsum("bcp,bcp->bc", flat, flat).astype(np.float64) / flat.shape[2]
        contrast = (np.sqrt(np.maximum(square - flat.mean(axis=2).astype(np.float64) ** 2, 0)) * std).max(axis=1)
        blank = contrast < frame["blank_fraction"] * frame["contrast_min"]
        summary = descriptors(emb, self.scorer.grid, frame.get("blocks"))
        z = np.linalg.solve(self.bundle.frame_cholesky, (summary - self.bundle.frame_mean).T)
        scores = np.linalg.norm(z, axis=0)
        limit = None if self.calibration is None else self.calibration.get("frame_threshold")
        return blank, (scores > limit) if limit is not None else np.zeros(n, bool), scores


def descriptors(emb: np.ndarray, grid: tuple[int, int], blocks: list[list[int]] | None) -> np.ndarray:
    """(B, 2d) float64 per-channel mean and std over positions of (P, B, d) embeddings (padim.frame.frame_descriptors).

    With the bundle's blocks, a deeper tap's channels are read once per patch of their own grid
    (every s-th position): the same numbers, a fraction of the reads.
    """
    p, b, d = emb.shape
    if blocks is None:
        mean, std = _moments(emb.reshape(p, b * d), b)
    else:
        on_grid = emb.reshape(*grid, b, d)
        parts = [_moments(on_grid[::sh, ::sw, :, c0:c1].reshape(-1, b * (c1 - c0)), b) for c0, c1, sh, sw in blocks]
        mean, std = (np.concatenate(column, axis=1) for column in zip(*parts))
    return np.concatenate([mean, std], axis=1).astype(np.float64)


def _moments(rows: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, c) mean and standard deviation of the (n, B*c) rows' columns (ones-vector products, as padim.frame)."""
    ones = np.ones((1, rows.shape[0]), rows.dtype)
    mean = (ones @ rows) / rows.shape[0]
    centred = rows - mean
    var = (ones @ np.square(centred, out=centred)) / rows.shape[0]
    return mean.reshape(b, -1), np.sqrt(var).reshape(b, -1)


def _items(images: Any) -> list[tuple[str, Any]]:
    """(name, source) pairs of what predict accepts."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            return [(str(p), p) for p in list_images(path)]
        if not path.exists():
            raise BundleError(f"{path}: no such file or folder")
        return [(str(path), path)]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [(f"array[{i}]", a) for i, a in enumerate(images)]
    return [(describe(src) if not isinstance(src, np.ndarray) else f"array[{i}]", src) for i, src in enumerate(images)]


def load(folder: str | os.PathLike, engine: str = "auto", batch_size: int = 32) -> Predictor:
    """A predictor for a bundle folder (checked file by file)."""
    return Predictor(read_bundle(folder), engine, batch_size)
