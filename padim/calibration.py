"""Thresholds set honestly: from scores of good parts only, at a target false-positive rate."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from padim.errors import PadimError, PadimWarning

DEFAULT_FPR = 0.01
MAX_PIXEL_SAMPLE = 200_000
# The frame check (padim.frame) is a safety net for gross failures (blank, covered, foreign frames);
# ordinary deviations are the patch Gaussians' job. Its threshold is the frame score at the target
# FPR on the good calibration images times this margin. Measured with Lite0 on the three demo
# textures (held-out images from the training band of the photo): good crops from the photo's other
# band, a texture drift the held-out images do not show, reached 1.05-1.29x the held-out maximum at
# 128 px and 1.50-1.79x at the default 256/224; the closest foreign texture started at 2.39x (gravel
# frames for a grass model, which its anomaly score passes), blank frames at 7.5x. 2 sits between.
FRAME_MARGIN = 2.0


def threshold_at_fpr(sorted_scores: np.ndarray, fpr: float) -> float:
    """Smallest observed score t such that at most a fraction fpr of the scores exceed t."""
    n = len(sorted_scores)
    allowed = int(math.floor(fpr * n + 1e-9))
    return float(sorted_scores[n - 1 - min(allowed, n - 1)])


def _logistic(x: np.ndarray, centre: float, spread: float) -> np.ndarray:
    """Map scores to (0, 1), centre -> 0.5, monotone."""
    z = np.clip((np.asarray(x, dtype=np.float64) - centre) / spread, -60, 60)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def _spread(sorted_scores: np.ndarray, threshold: float) -> float:
    """Scale of the normalisation: the scores' standard deviation, or a fallback for degenerate sets."""
    spread = float(np.std(sorted_scores)) if len(sorted_scores) > 1 else 0.0
    return spread if spread > 0 else max(abs(threshold) * 0.1, 1e-6)


def normalize(scores: np.ndarray, threshold: float, good_scores: np.ndarray) -> np.ndarray:
    """Scores in [0, 1], monotone, `threshold` at 0.5, scaled by the spread of good images' sorted scores.

    The one normalisation of scores: Calibration and exported models (padim.deployment) both use it.
    """
    return _logistic(scores, threshold, _spread(good_scores, threshold))


def holdout_split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(images to fit, good images held out for calibration): a seeded split keeping input order."""
    if not fraction:
        return items, []
    if not 0 < fraction < 1:
        raise PadimError(f"holdout must be a fraction in (0, 1), got {fraction}")
    n_held = max(1, round(fraction * len(items)))
    if n_held >= len(items):
        raise PadimError(f"holdout {fraction} of {len(items)} images leaves none to fit on")
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in sorted(order[n_held:])], [items[i] for i in sorted(order[:n_held])]


@dataclass
class Calibration:
    """Score distribution of good calibration images and the thresholds it gives.

    Parameters
    ----------
    image_scores : numpy.ndarray
        Image scores (map maxima) of the good calibration images (sorted, as float32, here).
    pixel_sample : numpy.ndarray
        A sample of their pixel scores (sorted, as float32, here).
    fpr : float
        Target false-positive rate, in (0, 1).
    source : str
        Where the images came from, for messages.
    frame_scores : numpy.ndarray or None
        Frame scores of the same images (sorted, as float64, here); None: frame check off.

    Attributes
    ----------
    image_scores, pixel_sample, fpr, source, frame_scores
        As given, sorted.
    image_threshold, pixel_threshold : float
        Scores above which a part, a pixel, is called defective.
    frame_threshold : float or None
        Frame score above which a frame is unlike any training image.
    """

    image_scores: np.ndarray
    pixel_sample: np.ndarray
    fpr: float
    source: str
    frame_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not 0 < self.fpr < 1:
            raise PadimError(f"target false-positive rate must be in (0, 1), got {self.fpr}")
        if len(self.image_scores) == 0 or len(self.pixel_sample) == 0:
            raise PadimError("calibration needs at least one good image")
        self.image_scores = np.sort(np.asarray(self.image_scores, dtype=np.float32))
        self.pixel_sample = np.sort(np.asarray(self.pixel_sample, dtype=np.float32))
        if not (np.isfinite(self.image_scores).all() and np.isfinite(self.pixel_sample).all()):
            raise PadimError("calibration scores contain NaN or inf: a threshold from them would pass every part")
        if self.frame_scores is not None:
            self.frame_scores = np.sort(np.asarray(self.frame_scores, dtype=np.float64))
            if len(self.frame_scores) != len(self.image_scores):
                raise PadimError("calibration needs one frame score per image score")

    @classmethod
    def from_predictions(cls, scores: np.ndarray, maps: np.ndarray, fpr: float, source: str,
                         seed: int = 0, frame_scores: np.ndarray | None = None) -> "Calibration":
        """Calibrate on the scores and maps of good images; warn when they are too few for the target FPR."""
        pixels = np.asarray(maps, dtype=np.float32).ravel()
        if pixels.size > MAX_PIXEL_SAMPLE:
            pixels = np.random.default_rng(seed).choice(pixels, MAX_PIXEL_SAMPLE, replace=False)
        calibration = cls(np.asarray(scores), pixels, fpr, source, frame_scores)
        needed = math.ceil(1 / fpr)
        if len(scores) < needed:
            warnings.warn(
                f"only {len(scores)} calibration images: the image threshold is their maximum score, "
                f"a false-positive rate of {fpr:.2%} needs at least {needed} good images", PadimWarning, stacklevel=3)
        return calibration

    @property
    def image_threshold(self) -> float:
        """Image score above which a part is called defective."""
        return threshold_at_fpr(self.image_scores, self.fpr)

    @property
    def pixel_threshold(self) -> float:
        """Pixel score above which a pixel is called defective."""
        return threshold_at_fpr(self.pixel_sample, self.fpr)

    @property
    def frame_threshold(self) -> float | None:
        """Frame score above which a frame is unlike any training image (None without frame scores)."""
        if self.frame_scores is None:
            return None
        return FRAME_MARGIN * threshold_at_fpr(self.frame_scores, self.fpr)

    def normalize_scores(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Image scores in [0, 1] with the (given or calibrated) threshold at 0.5."""
        t = self.image_threshold if threshold is None else threshold
        return normalize(scores, t, self.image_scores)

    def normalize_maps(self, maps: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Pixel scores in [0, 1] with the (given or calibrated) pixel threshold at 0.5."""
        t = self.pixel_threshold if threshold is None else threshold
        return normalize(maps, t, self.pixel_sample)

    def describe(self) -> str:
        """How the thresholds were chosen, in one sentence."""
        frame = "" if self.frame_threshold is None else f", frame {self.frame_threshold:.4g}"
        return (f"thresholds at a {self.fpr:.2%} false-positive rate on {len(self.image_scores)} good images "
                f"({self.source}): image {self.image_threshold:.4g}, pixel {self.pixel_threshold:.4g}{frame}")

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready summary stored in model files."""
        meta = {"fpr": self.fpr, "source": self.source, "n_images": int(len(self.image_scores)),
                "image_threshold": self.image_threshold, "pixel_threshold": self.pixel_threshold}
        if self.frame_threshold is not None:
            meta["frame_threshold"] = self.frame_threshold
        return meta
