"""Predictions: what every detector returns, the one loop that collects them, and calibrated verdicts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from padim.data import Batch, Preprocess, check_finite
from padim.engine import Engine
from padim.frame import FrameModel, frame_contrast, frame_descriptors, frame_reasons
from padim.lanes import batch_lanes, run_in_lanes
from padim.scoring import NUMPY_MIN_BATCH
from padim.utils.cpus import torch_threads
from padim.utils.constraints import check_threshold

# What a detector yields per batch: (batch, maps (B, H, W), scores (B,), more per-image arrays by name).
Scored = tuple[Batch, Any, Any, dict[str, Any]]


@dataclass
class Prediction:
    """Image scores and anomaly maps, in input order; with a calibration, also verdicts and defect masks.

    The frame check (padim.frame) adds frame scores, contrasts and blank flags; a frame that fails it
    is defective whatever its anomaly score, and `reasons` says why each image was called defective.
    """

    names: list[str]
    scores: np.ndarray  # (N,) float32, raw (higher is more anomalous)
    maps: Any  # (N, H, W) float32 array, or a list of per-image arrays at original sizes
    normalized_scores: np.ndarray | None = None  # (N,) in [0, 1], threshold at 0.5
    decisions: np.ndarray | None = None  # (N,) bool: True = defective (score > image threshold)
    masks: Any = None  # like maps, bool: pixel score > pixel threshold
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    frame_scores: np.ndarray | None = None  # (N,) float64: Mahalanobis distance of the frame's pooled features
    contrast: np.ndarray | None = None  # (N,) float64: the frame's pixel standard deviation (padim.frame)
    blank: np.ndarray | None = None  # (N,) bool: contrast far below every training frame's
    frame_threshold: float | None = None
    reasons: list[str] | None = None  # (N,) why each image is defective ('' for a pass), see padim.frame


def _numpy(x: Any) -> np.ndarray:
    """A tensor (on any device) or array as a numpy array."""
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _original_maps(maps: Any, batch: Batch, preprocess: Preprocess) -> list[np.ndarray]:
    """A batch's maps on each image's original grid (preprocess.to_original)."""
    rows = [m.cpu() if isinstance(m, torch.Tensor) else torch.from_numpy(m) for m in maps]
    return [preprocess.to_original(m[None], s)[0].numpy() for m, s in zip(rows, batch.original_sizes)]


def score_embeddings(emb: torch.Tensor, net: Any, frame: FrameModel | None,
                     threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Maps, scores and frame scores (numpy or None) of positions-first embeddings (centred in place)."""
    frame_scores = None
    if frame is not None:  # before scoring: score_positions centres the embeddings in place
        frame_scores = frame.scores(frame_descriptors(emb, net.grid, net.descriptor_blocks)).cpu().numpy()
    with torch.no_grad():
        maps, scores = net.score_positions(emb, threads)
    return maps, scores, frame_scores


def _score_in_lanes(pixels: torch.Tensor, lanes: list[Engine], net: Any,
                    frame: FrameModel | None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """score_embeddings of a batch whose parts each lane embeds and scores side by side (padim.lanes)."""
    def part(lane: Engine, sl: slice) -> tuple[torch.Tensor, torch.Tensor, Any]:
        with torch.no_grad():
            return score_embeddings(net.project(lane(pixels[sl])), net, frame, lane.threads)

    parts = run_in_lanes(part, len(pixels), lanes)
    frame_scores = None if frame is None else np.concatenate([p[2] for p in parts])
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), frame_scores


def scored_batches(batches: Iterable[Batch], engine: Engine, net: Any, frame: FrameModel | None,
                   std: tuple[float, float, float], device: str | torch.device = "cpu") -> Iterator[Scored]:
    """(batch, maps, scores, frame-check numbers) of every batch, embedded by an engine and scored by a PadimNet.

    Batches of padim.lanes.LANE_MIN_BATCH or more go through the engine's lanes, when it has any (batch_lanes).
    """
    for batch in batches:
        contrast = frame_contrast(batch.pixels, std)
        lanes = batch_lanes(engine, len(batch.pixels))
        if lanes:
            maps, scores, frame_scores = _score_in_lanes(batch.pixels, lanes, net, frame)
        else:
            with torch.no_grad():
                emb = net.project(engine(batch.pixels).to(device))
            # A batch below NUMPY_MIN_BATCH is small torch work, its distances split over our own threads
            # (padim.utils.cpus.torch_threads); a larger one (WR50 has no lanes) keeps torch's threads.
            with torch_threads(1 if len(batch.pixels) < NUMPY_MIN_BATCH else torch.get_num_threads()):
                maps, scores, frame_scores = score_embeddings(emb, net, frame)
        # NaN/inf in a patch's embedding (or in the model) reaches its image's maximum: checking the
        # scores is equivalent to checking every embedding, at a fraction of the cost.
        check_finite(scores, batch, "anomaly score is NaN/inf (NaN/inf features or model tensors)")
        blank = None if frame is None else frame.blank(contrast).cpu().numpy()
        yield batch, maps, scores, {"contrast": contrast.cpu().numpy(), "frame_scores": frame_scores, "blank": blank}


def collect(scored: Iterable[Scored], original_size: Preprocess | None = None) -> Prediction:
    """One Prediction from what a detector yields per batch (Scored), in input order.

    Maps and scores may be tensors or arrays. Each extra name (contrast, frame_scores, blank) becomes
    a Prediction field, None when any batch has None for it. With `original_size`, the preprocessing
    the maps went through, they are mapped back to each image's original size, as a list.
    """
    names: list[str] = []
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    extras: dict[str, list] = {}
    for batch, batch_maps, batch_scores, batch_extras in scored:
        names += batch.names
        scores.append(_numpy(batch_scores))
        if original_size is None:
            maps.append(_numpy(batch_maps))
        else:
            maps += _original_maps(batch_maps, batch, original_size)
        for key, value in batch_extras.items():
            extras.setdefault(key, []).append(value)
    fields = {k: None if any(v is None for v in vals) else np.concatenate(vals) for k, vals in extras.items()}
    return Prediction(names, np.concatenate(scores), np.concatenate(maps) if original_size is None else maps, **fields)


def add_verdicts(pred: Prediction, calibrated: Any, image_threshold: float | None,
                 pixel_threshold: float | None) -> Prediction:
    """Fill in normalised scores, decisions, reasons and masks from given thresholds or a calibration.

    `calibrated` offers image_threshold, pixel_threshold and normalize_scores(scores, threshold)
    (a Calibration, or an exported model's predictor), optionally frame_threshold, or is None.
    A blank frame, or one whose frame score exceeds the frame threshold, is defective whatever its
    anomaly score; without an image threshold decisions stay None, but reasons still name blank frames.
    """
    image_threshold = check_threshold("image threshold", image_threshold)
    pixel_threshold = check_threshold("pixel threshold", pixel_threshold)
    if calibrated is not None:
        image_threshold = calibrated.image_threshold if image_threshold is None else image_threshold
        pixel_threshold = calibrated.pixel_threshold if pixel_threshold is None else pixel_threshold
        pred.normalized_scores = calibrated.normalize_scores(pred.scores, image_threshold)
        pred.frame_threshold = getattr(calibrated, "frame_threshold", None)
    n = len(pred.scores)
    blank = np.zeros(n, bool) if pred.blank is None else np.asarray(pred.blank, bool)
    unlike = np.zeros(n, bool)
    if pred.frame_threshold is not None and pred.frame_scores is not None:
        unlike = pred.frame_scores > pred.frame_threshold
    above = np.zeros(n, bool)
    if image_threshold is not None:
        above = pred.scores > image_threshold
        pred.decisions = above | blank | unlike
        pred.image_threshold = float(image_threshold)
    if pred.blank is not None or pred.frame_scores is not None or image_threshold is not None:
        pred.reasons = frame_reasons(blank.tolist(), unlike.tolist(), above.tolist())
    if pixel_threshold is not None:
        maps = pred.maps
        pred.masks = [m > pixel_threshold for m in maps] if isinstance(maps, list) else maps > pixel_threshold
        pred.pixel_threshold = float(pixel_threshold)
    return pred
