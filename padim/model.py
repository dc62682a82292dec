"""The PaDiM estimator: scikit-learn-style glue around a pure torch network."""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from padim import paper, staircase
from padim.calibration import DEFAULT_FPR, Calibration
from padim.errors import PadimWarning
from padim.backbone import DEFAULT_BACKBONE, RANDOM, Backbone, build_backbone, spec_for
from padim.utils.cpus import available_cpus
from padim.data import (DEFAULT_MAX_PIXELS, Batch, Preprocess, as_items, as_size, check_finite,
                        iter_batches, n_batches)
from padim.embedding import positions_to_maps, random_channels, split_by_tap
from padim.utils.constraints import (FILE_CONSTRAINTS, PARAMETER_CONSTRAINTS, check_memory, check_params, check_threshold,
                                     check_value)
from padim.engine import AUTO, Engine, TapEmbedding, build_engine, check_device, resolve
from padim.errors import NotFittedError, PadimError
from padim.frame import FrameModel, FrameStats, frame_contrast
from padim.gaussian import BatchBuffer, GaussianStats, precision_factor
from padim.modelfile import read_model, write_model
from padim.plan import Plan, make_plan
from padim.prediction import Prediction, Scored, add_verdicts, collect
from padim.scoring import image_scores, mahalanobis, patch_distances, smooth_maps, smoothing_matrices, split_mean


class PadimNet(nn.Module):
    """Pure torch PaDiM: normalised (B, 3, H, W) images -> anomaly maps (B, H, W) and image scores (B,).

    Its buffers are the only copy of the fitted Gaussians: `mean` (P, d) float64 and `factor_0` ...
    `factor_{k-1}`, the stairs (padim.staircase) of U = W^T, float32, with W = L^-1 the inverse
    Cholesky factor (precision = W^T W).
    """

    def __init__(self, backbone: Backbone, channel_indices: torch.Tensor, sigma: float,
                 size: tuple[int, int]) -> None:
        super().__init__()
        self.features = TapEmbedding(backbone.extractor, split_by_tap(channel_indices, backbone.channels))
        self.sigma = float(sigma)
        self.size = tuple(size)
        with torch.no_grad():
            self.grid = tuple(backbone.extractor(torch.zeros(1, 3, *self.size))[0].shape[-2:])
        m_h, m_w = smoothing_matrices(self.grid, self.size, self.sigma)
        self.register_buffer("mean", torch.empty(0, dtype=torch.float64))
        self.n_stairs = 0
        self.register_buffer("projection", torch.empty(0))  # PCA components (D, d), when used
        self.register_buffer("mean_hi", torch.empty(0), persistent=False)
        self.register_buffer("mean_lo", torch.empty(0), persistent=False)
        self.register_buffer("smooth_h", m_h, persistent=False)
        self.register_buffer("smooth_w", m_w, persistent=False)

    @property
    def extractor(self) -> nn.Module:
        """The tapped backbone."""
        return self.features.extractor

    @property
    def factor(self) -> list[torch.Tensor]:
        """The stairs of U = W^T (padim.staircase), one buffer each."""
        return [getattr(self, f"factor_{j}") for j in range(self.n_stairs)]

    def set_gaussians(self, mean: torch.Tensor, stairs: list[torch.Tensor]) -> None:
        """Install fitted means (P, d) and the stairs of the factors U."""
        self.mean = mean
        for j in range(len(stairs), self.n_stairs):
            delattr(self, f"factor_{j}")
        for j, blk in enumerate(stairs):
            self.register_buffer(f"factor_{j}", blk)
        self.n_stairs = len(stairs)
        self.mean_hi, self.mean_lo = split_mean(mean)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the PCA projection, if any, to positions-first (P, B, D) embeddings."""
        return torch.matmul(x, self.projection) if self.projection.numel() else x

    def embed_positions(self, x: torch.Tensor) -> torch.Tensor:
        """Positions-first patch embeddings (P, B, d) of a normalised batch."""
        return self.project(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, d, h, w) of a normalised batch."""
        return positions_to_maps(self.embed_positions(x), self.grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps at the input's size and image scores."""
        return self.score_positions(self.embed_positions(x))

    def score_positions(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, H, W) and image scores (B,) from positions-first embeddings (centred in place)."""
        dist = patch_distances(embedding, self.factor, self.mean_hi, self.mean_lo)
        maps = smooth_maps(dist.T.reshape(embedding.shape[1], *self.grid), self.smooth_h, self.smooth_w)
        return maps, image_scores(maps)

    def patch_distances(self, embedding: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance (B, h, w) of every patch of (B, d, h, w) embeddings to its position's Gaussian."""
        return mahalanobis(embedding, self.mean, staircase.to_upper(self.factor).transpose(1, 2))


def _check_file_values(meta: dict) -> None:
    """Bound the values only a model file sets (the constructor's parameters are checked by _check_params)."""
    rules = FILE_CONSTRAINTS
    check_value("n_samples_seen", meta["n_samples_seen"], rules["n_samples_seen"])
    shape = meta["feature_shape"]
    if not isinstance(shape, list) or len(shape) != 2:
        raise PadimError(f"feature_shape must be [height, width], got {shape!r}")
    for side in shape:
        check_value("feature_shape", side, rules["feature_side"])
    channels = meta["backbone"]["channels"]
    if not isinstance(channels, list) or not channels:
        raise PadimError(f"backbone channels must be a non-empty list, got {channels!r}")
    for c in channels:
        check_value("backbone channels", c, rules["channels"])
    check_value("precision_dtype", meta.get("precision_dtype"), rules["precision_dtype"])
    check_value("statistics", meta.get("statistics", False), rules["statistics"])


class PaDiM:
    """PaDiM anomaly detector (Defard et al., 2020).

    Parameters follow the paper by default: efficientnet_lite0 (real ImageNet weights that install
    offline) tapped at strides 4, 8, 16; resize 256 (bicubic), center crop 224; eps = 0.01; sigma = 4.
    `n_features=None` uses the backbone's Rd default (100 for resnet18, 550 for wide_resnet50_2, every
    channel otherwise); "all" keeps every channel. `reduction="pca"` projects the embeddings on their
    n_features principal components instead (fitted on the training embeddings, paper Table II). `weights`: None finds ImageNet weights offline,
    a path reads a .pth/.safetensors file, "random" gives seeded random weights (tests only).
    `holdout` > 0 keeps that fraction of the good training images (seeded) out of the fit to set the
    thresholds at the target false-positive rate `fpr`; `calibrate()` does the same on a separate set.
    `engine` runs the backbone ("auto": the fastest exact runtime installed, see padim.engine; or
    "torch", "torch-fast", "onnxruntime", "openvino"); any engine predicts with a model any other fitted.
    `threads`: CPU threads for it (None: the CPUs this process may use, from its affinity and quota).
    `max_pixels`: largest image file decoded, checked from its header (None: no limit of padim's own).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: tuple[str, ...] | list[str] | None = None,
        n_features: int | str | None = None,
        reduction: str = "random",
        eps: float = paper.EPSILON,
        image_size: int | tuple[int, int] = paper.MVTEC_RESIZE,
        crop_size: int | tuple[int, int] | None = paper.MVTEC_CROP,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 32,
        weights: str | os.PathLike | None = None,
        sigma: float = paper.GAUSSIAN_SIGMA,
        workers: int | None = None,
        verbose: bool = False,
        holdout: float = 0.0,
        fpr: float = DEFAULT_FPR,
        engine: str = AUTO,
        threads: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.n_features = n_features
        self.reduction = reduction
        self.eps = eps
        self.image_size = image_size
        self.crop_size = crop_size
        self.seed = seed
        self.device = device
        self.batch_size = batch_size
        self.weights = weights
        self.sigma = sigma
        self.workers = workers
        self.verbose = verbose
        self.holdout = holdout
        self.fpr = fpr
        self.engine = engine
        self.threads = threads
        self.max_pixels = max_pixels
        check_params({name: getattr(self, name) for name in PARAMETER_CONSTRAINTS})  # fit() checks again, with devices

    # ----------------------------------------------------------------------------- set-up
    @property
    def preprocess_(self) -> Preprocess:
        """The preprocessing these parameters define."""
        return Preprocess(as_size(self.image_size), as_size(self.crop_size))  # type: ignore[arg-type]

    def _check_params(self) -> None:
        """Reject parameter values that cannot work, before any image is read (see padim.utils.constraints)."""
        check_params({name: getattr(self, name) for name in PARAMETER_CONSTRAINTS})
        self.preprocess_  # noqa: B018 - crop within the image
        resolve(self.engine, self.device)
        check_device(self.device)

    def _init_network(self) -> None:
        """Build the backbone and draw the Rd channels (once, before the first batch)."""
        self._check_params()
        backbone = build_backbone(self.backbone, self.layers, self.weights, self.seed)
        n_total = sum(backbone.channels)
        n_features = self.n_features
        if n_features is None:
            n_features = spec_for(self.backbone).n_features
        elif n_features == "all":
            n_features = None
        self.backbone_ = backbone
        if self.reduction == "pca":
            if n_features is None or not 1 <= int(n_features) <= n_total:
                raise PadimError(f"reduction='pca' needs n_features between 1 and {n_total}, got {n_features!r}")
            self.n_components_ = int(n_features)
            n_features = None
        self.channel_indices_ = random_channels(n_total, n_features, self.seed)  # type: ignore[arg-type]
        d = self.n_components_ if self.reduction == "pca" else int(self.channel_indices_.numel())
        check_memory(self.preprocess_.output_size, backbone.strides[0], d)
        self.net_ = PadimNet(backbone, self.channel_indices_, self.sigma, self.preprocess_.output_size).to(self.device)
        self.engine_: Engine | None = None
        self.components_: torch.Tensor | None = None
        self.stats_: GaussianStats | None = None
        self.frame_stats_: FrameStats | None = None
        self.frame_: FrameModel | None = None
        self.n_samples_seen_ = 0

    def _is_fitted(self) -> bool:
        return getattr(self, "n_samples_seen_", 0) > 0

    def _require_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError("this PaDiM model is not fitted yet: call fit() first")

    # ----------------------------------------------------------------------------- fitting
    def fit(self, images: Any) -> "PaDiM":
        """Fit the per-position Gaussians on images of good parts (replaces any previous fit)."""
        self._init_network()
        self.calibration_: Calibration | None = None
        items = as_items(images)
        make_plan(self, len(items), measure=False).check()
        fit_items, held = self.split_holdout(items)
        self.partial_fit(fit_items)
        return self._calibrate_holdout(held)

    def plan(self, n_images: int, measure: bool = True) -> Plan:
        """Peak memory, file sizes and time per image of fitting n_images, before any image is read.

        Builds the network and (measure=True) runs one batch of zeros through the engine to time it.
        """
        if not hasattr(self, "net_"):
            self._init_network()
        return make_plan(self, n_images, measure)

    def split_holdout(self, items: list) -> tuple[list, list]:
        """(images to fit, good images held out for calibration): a seeded split by `holdout`."""
        if not self.holdout:
            return items, []
        if not 0 < self.holdout < 1:
            raise PadimError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        n_held = max(1, round(self.holdout * len(items)))
        if n_held >= len(items):
            raise PadimError(f"holdout {self.holdout} of {len(items)} images leaves none to fit on")
        order = np.random.default_rng(self.seed).permutation(len(items))
        return [items[i] for i in sorted(order[n_held:])], [items[i] for i in sorted(order[:n_held])]

    def _calibrate_holdout(self, held: list) -> "PaDiM":
        """Calibrate on the held-out images, if any."""
        if not held:
            return self
        return self.calibrate(held, source=f"{len(held)} held-out training images ({self.holdout:.0%}, seed {self.seed})")

    def calibrate(self, good_images: Any, fpr: float | None = None, source: str | None = None) -> "PaDiM":
        """Set image and pixel thresholds at a false-positive rate on good images the fit has not seen."""
        fpr = self.fpr if fpr is None else fpr
        check_value("fpr", fpr, PARAMETER_CONSTRAINTS["fpr"])  # before any image is scored
        items = as_items(good_images)
        pred = self.predict(items)
        self.calibration_ = Calibration.from_predictions(
            pred.scores, pred.maps, fpr, source or f"{len(items)} separate good images", seed=self.seed,
            frame_scores=pred.frame_scores)
        return self

    def partial_fit(self, images: Any) -> "PaDiM":
        """Add more good images to the statistics; same result as fitting on everything at once."""
        items = as_items(images)
        if not hasattr(self, "net_"):
            self._init_network()
        if self._is_fitted() and self.stats_ is None:
            raise PadimError("this model was saved without statistics: it can predict but not be refitted "
                             "(save with statistics=True / --resumable to continue fitting later)")
        if self.reduction == "pca" and self.components_ is None:
            self.set_components(self.pooled_stats(items))
        if self.stats_ is None:
            self.stats_ = self.empty_stats()
            self.frame_stats_ = FrameStats.empty(self.stats_.dim, self.device)
        self.accumulate(items, self.stats_, self.frame_stats_)
        self._finish_fit()
        self._discard_calibration()
        return self

    def empty_stats(self) -> GaussianStats:
        """Zero statistics of the right shape (one probe forward pass gives the feature grid)."""
        self.feature_shape_ = self.net_.grid
        d = self.n_components_ if self.reduction == "pca" else int(self.channel_indices_.numel())
        return GaussianStats.empty(self.net_.grid[0] * self.net_.grid[1], d, self.device)

    def accumulate(self, items: list, stats: GaussianStats, frame: FrameStats | None = None) -> GaussianStats:
        """Add the embeddings of images to per-position statistics (and frame statistics), batch by batch."""
        buffer = BatchBuffer(stats)
        for batch, emb in self._embeddings(items, "fit"):
            # A NaN/inf anywhere in an image's embedding makes its sum non-finite: one reduction, not a mask.
            check_finite(emb.sum(dim=(0, 2)), batch)
            if frame is not None:  # before the buffer: the same embeddings, in the same pass
                frame.update(emb, frame_contrast(batch.pixels, self.preprocess_.std))
            buffer.add(emb)
        buffer.flush()
        return stats

    def _discard_calibration(self) -> None:
        """New statistics change the score distribution: thresholds set before no longer hold."""
        if getattr(self, "calibration_", None) is not None:
            warnings.warn("the model changed: its calibration was discarded, call calibrate() again",
                          PadimWarning, stacklevel=3)
        self.calibration_ = None

    def pooled_stats(self, items: list) -> GaussianStats:
        """Mean and scatter of all patch embeddings of all images, pooled over positions (for PCA)."""
        pooled: GaussianStats | None = None
        for batch, emb in self._embeddings(items, "pca"):
            check_finite(emb.sum(dim=(0, 2)), batch)
            x = emb.reshape(1, -1, emb.shape[2])  # every patch of every image
            pooled = pooled or GaussianStats.empty(1, x.shape[2], emb.device)
            pooled.update(x)
        return pooled or GaussianStats.empty(1, int(self.channel_indices_.numel()), self.device)

    def set_components(self, pooled: GaussianStats) -> None:
        """Keep the n_features leading principal components of the pooled embeddings."""
        _, vectors = torch.linalg.eigh(pooled.covariance(0.0)[0])  # ascending eigenvalues
        self.components_ = vectors[:, -self.n_components_ :].flip(1).to(torch.float32).contiguous()
        self.net_.projection = self.components_

    def merge(self, other: "PaDiM") -> "PaDiM":
        """Add another model's statistics (fitted separately on other images) to this one."""
        self._require_fitted()
        other._require_fitted()
        if self.stats_ is None or other.stats_ is None:
            raise PadimError("both models need their statistics to merge (save with statistics=True)")
        mine, theirs = self._identity(), other._identity()
        for key in mine:
            if mine[key] != theirs[key]:
                raise PadimError(f"cannot merge models with different {key}: {mine[key]!r} vs {theirs[key]!r}")
        if not torch.equal(self.channel_indices_, other.channel_indices_):
            raise PadimError("cannot merge models with different Rd channel selections (different seeds?)")
        if not torch.equal(self.net_.projection, other.net_.projection):
            raise PadimError("cannot merge PCA models with different components (fit the PCA once, then partial_fit)")
        self.stats_.merge(other.stats_)
        self._merge_frames(other)
        self._finish_fit()
        self._discard_calibration()
        return self

    def _merge_frames(self, other: "PaDiM") -> None:
        """Merge the frame statistics; if either model has none (an old file), the merged one has none."""
        mine, theirs = getattr(self, "frame_stats_", None), getattr(other, "frame_stats_", None)
        if mine is not None and theirs is not None:
            mine.merge(theirs)
            return
        if mine is not None or theirs is not None:
            warnings.warn("one merged model has no frame statistics (saved before the frame check): "
                          "the merged model's frame check is off", PadimWarning, stacklevel=3)
        self.frame_stats_ = None

    def _identity(self) -> dict[str, Any]:
        """What two models must share to be merged."""
        return {
            "backbone": self.backbone_.name,
            "layers": self.backbone_.layers,
            "reduction": self.reduction,
            "weights": self.backbone_.source.sha256,
            "preprocessing": self.preprocess_.to_dict(),
            "feature grid": self.feature_shape_,
            "eps": float(self.eps),
        }

    def _finish_fit(self) -> None:
        """Derive the scoring state (mean, inverse Cholesky factor) from the statistics, once."""
        assert self.stats_ is not None
        self.n_samples_seen_ = self.stats_.n
        self.created_ = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        stairs = precision_factor(self.stats_, float(self.eps))
        if not all(bool(torch.isfinite(blk.sum())) for blk in stairs):  # NaN/inf reach the sum: one pass, no mask
            raise PadimError(f"eps={float(self.eps):g} is too small for these features: the inverse covariance "
                             f"overflows float32 (use a larger eps; the paper's is {paper.EPSILON})")
        self.net_.set_gaussians(self.stats_.mean.clone(), stairs)
        frame_stats = getattr(self, "frame_stats_", None)
        self.frame_ = None if frame_stats is None else FrameModel.from_stats(frame_stats, float(self.eps))

    @property
    def mean_(self) -> torch.Tensor:
        """Per-position means (P, d), float64 (the network's buffer)."""
        self._require_fitted()
        return self.net_.mean

    @property
    def precision_cholesky_(self) -> torch.Tensor:
        """Inverse Cholesky factors W (P, d, d), precision = W^T W: built densely on access from the network's stairs."""
        self._require_fitted()
        return staircase.to_upper(self.net_.factor).transpose(1, 2)

    @property
    def embedding_dim_(self) -> int:
        """Dimension d of the patch embeddings the Gaussians model."""
        self._require_fitted()
        return int(self.mean_.shape[1])

    @property
    def covariance_(self) -> torch.Tensor:
        """Regularised covariances (P, d, d), float64; needs the statistics."""
        self._require_fitted()
        if self.stats_ is None:
            raise PadimError("this model was saved without statistics: no covariance available")
        return self.stats_.covariance(float(self.eps))

    # ----------------------------------------------------------------------------- prediction
    def engine_for_device(self) -> Engine:
        """The engine running the backbone (built on first use: 'auto' measures nothing, it checks exactness)."""
        if getattr(self, "engine_", None) is None:
            self.engine_ = build_engine(self.net_.features, self.preprocess_.output_size, self.engine,
                                        self.device, self.threads)
            if self.verbose:
                print(f"engine: {self.engine_.describe()}", file=sys.stderr)
        return self.engine_

    def _embeddings(self, items: list, what: str) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Positions-first embeddings (P, B, d) of every batch, with a progress bar when verbose."""
        from tqdm.auto import tqdm

        engine = self.engine_for_device()
        workers = self.workers
        if workers is None and engine.name in ("openvino", "onnxruntime") and available_cpus() >= 2:
            # Their threads run outside the GIL: one decoding thread overlaps them (+5-9% on 2 cores),
            # where beside torch's own OpenMP threads it costs a little.
            workers = 1
        batches = iter_batches(items, self.preprocess_, self.batch_size, workers, self.max_pixels)
        bar = tqdm(batches, total=n_batches(len(items), self.batch_size), desc=what, unit="batch",
                   disable=not self.verbose, leave=False)
        with torch.no_grad():
            for batch in bar:
                yield batch, self.net_.project(engine(batch.pixels).to(self.device))

    def transform(self, images: Any) -> np.ndarray:
        """Patch embeddings (N, d, h, w) of images, float32 (Rd channels, or PCA components once fitted)."""
        parts = [positions_to_maps(emb, self.net_.grid).cpu().numpy() for _, emb in self._embeddings(as_items(images), "embed")]
        return np.concatenate(parts)

    def predict_batches(self, images: Any) -> Iterator[tuple[Batch, torch.Tensor, torch.Tensor]]:
        """Yield (batch, maps (B, H, W), scores (B,)) batch by batch, for streaming large folders."""
        for batch, maps, scores, _ in self.scored_batches(images):
            yield batch, maps, scores

    def scored_batches(self, images: Any) -> Iterator[Scored]:
        """Like predict_batches, with the frame check's numbers (frame_scores, contrast, blank: numpy or None)."""
        self._require_fitted()
        items = as_items(images)
        frame = getattr(self, "frame_", None)
        for batch, emb in self._embeddings(items, "predict"):
            contrast = frame_contrast(batch.pixels, self.preprocess_.std)
            checks = {"contrast": contrast.cpu().numpy(), "frame_scores": None, "blank": None}
            if frame is not None:  # before scoring: score_positions centres the embeddings in place
                checks["frame_scores"] = frame.scores(emb).cpu().numpy()
                checks["blank"] = frame.blank(contrast).cpu().numpy()
            with torch.no_grad():
                maps, scores = self.net_.score_positions(emb)
            # NaN/inf in a patch's embedding (or in the model) reaches its image's maximum: checking the
            # scores is equivalent to checking every embedding, at a fraction of the cost.
            check_finite(scores, batch, "anomaly score is NaN/inf (NaN/inf features or model tensors)")
            yield batch, maps, scores, checks

    def predict(self, images: Any, original_size: bool = False, image_threshold: float | None = None,
                pixel_threshold: float | None = None) -> Prediction:
        """Scores and anomaly maps (preprocessed grid or original sizes); verdicts when calibrated or given thresholds."""
        check_threshold("image_threshold", image_threshold)  # before any image is scored
        check_threshold("pixel_threshold", pixel_threshold)
        pred = collect(self.scored_batches(images), self.preprocess_ if original_size else None)
        return add_verdicts(pred, getattr(self, "calibration_", None), image_threshold, pixel_threshold)

    def score_samples(self, images: Any) -> np.ndarray:
        """Image anomaly scores only (higher is more anomalous)."""
        return self.predict(images).scores

    # ----------------------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """What the model holds, JSON-ready (written into model files, shown by `padim info`)."""
        from padim import __version__

        self._require_fitted()
        return {
            "library_version": __version__,
            "created": self.created_,
            "backbone": {
                "name": self.backbone_.name,
                "layers": list(self.backbone_.layers),
                "channels": list(self.backbone_.channels),
                "strides": list(self.backbone_.strides),
                "weights": self.backbone_.source.to_dict(),
            },
            "n_features": self.embedding_dim_,
            "n_features_total": int(sum(self.backbone_.channels)),
            "reduction": self.reduction,
            "seed": int(self.seed),
            "eps": float(self.eps),
            "sigma": float(self.sigma),
            "preprocessing": self.preprocess_.to_dict(),
            "feature_shape": list(self.feature_shape_),
            "n_samples_seen": int(self.n_samples_seen_),
            "frame": self._frame_meta(),
        }

    def _frame_meta(self) -> dict[str, Any] | None:
        """The frame check's scalars (its Gaussian travels as tensors), or None when it is off."""
        stats = getattr(self, "frame_stats_", None)
        if stats is None:
            return None
        return {"summary": "mean and std over positions of each embedding channel", "dim": int(stats.gaussian.dim),
                "n_images": int(stats.n), "contrast_min": float(stats.contrast_min)}

    def save(self, path: str | os.PathLike, statistics: bool = False, half: bool = False) -> None:
        """Write the model atomically; statistics=True also stores what partial_fit/merge need.

        half=True stores the inverse Cholesky factors in float16 (half the size; scores change by
        about 1e-3 relative, see benchmarks/); they are computed in float32 after loading.
        """
        meta = self.metadata()
        meta["precision_dtype"] = "float16" if half else "float32"
        factor = staircase.to_packed(self.net_.factor)  # the file stores W's lower triangle
        if half and not bool(torch.isfinite(factor.half()).all()):
            raise PadimError(f"{path}: the inverse covariance factors exceed float16's range: save without half "
                             f"(--half) or fit with a larger eps")
        tensors = {
            "mean": self.mean_,
            "precision_cholesky": factor.half() if half else factor,
            "channel_indices": self.channel_indices_,
        }
        if self.net_.projection.numel():
            tensors["projection"] = self.net_.projection
        if self.frame_stats_ is not None:  # small (2d x 2d): kept even without statistics, it scores frames
            tensors["frame_mean"] = self.frame_stats_.gaussian.mean[0]
            tensors["frame_scatter"] = self.frame_stats_.gaussian.packed_scatter()[0]
        calibration = getattr(self, "calibration_", None)
        if calibration is not None:
            meta["calibration"] = calibration.to_meta()
            tensors["calibration_image_scores"] = torch.from_numpy(calibration.image_scores)
            tensors["calibration_pixel_sample"] = torch.from_numpy(calibration.pixel_sample)
            if calibration.frame_scores is not None:
                tensors["calibration_frame_scores"] = torch.from_numpy(calibration.frame_scores)
        meta["statistics"] = bool(statistics)
        if statistics:
            if self.stats_ is None:
                raise PadimError("this model has no statistics to save (it was loaded without them)")
            tensors["scatter"] = self.stats_.packed_scatter()
        write_model(path, tensors, meta)

    @classmethod
    def load(
        cls, path: str | os.PathLike, weights: str | os.PathLike | None = None, device: str = "cpu", **params: Any
    ) -> "PaDiM":
        """Read a model file, rebuild its backbone and check the weights are the ones it was fitted with."""
        check_params(params)  # the caller's values, refused as such (not as the file's) and before reading it
        check_device(device)
        tensors, meta = read_model(path)
        # The file is memory-mapped: copy what the model keeps, so that once the big factor and scatter
        # are unpacked nothing references the mapping and its pages leave the resident set.
        tensors = {k: v if k in ("precision_cholesky", "scatter") else v.clone() for k, v in tensors.items()}
        try:
            return cls._from_file(path, tensors, meta, weights, device, params)
        except PadimError as exc:
            if str(path) in str(exc):
                raise
            raise PadimError(f"{path}: {exc}") from None
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise PadimError(f"{path}: model metadata incomplete or malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_file(cls, path: Any, tensors: dict, meta: dict, weights: Any, device: str, params: dict) -> "PaDiM":
        """Build a fitted model from checked file contents."""
        _check_file_values(meta)
        bb, pre = meta["backbone"], meta["preprocessing"]
        source = bb["weights"]
        if weights is None:
            weights = RANDOM if source["kind"] == RANDOM else (source["path"] if source["kind"] == "file" else None)
        model = cls(
            backbone=bb["name"], layers=tuple(bb["layers"]), n_features=meta["n_features"],
            reduction=meta.get("reduction", "random"), eps=meta["eps"],
            image_size=tuple(pre["image_size"]), crop_size=tuple(pre["crop_size"]) if pre["crop_size"] else None,
            seed=meta["seed"], device=device, weights=weights,
            sigma=meta["sigma"], **params,
        )
        model._check_params()
        if Preprocess.from_dict(pre) != model.preprocess_:
            raise PadimError(f"{path}: preprocessing in the file is not one this version can reproduce")
        backbone = build_backbone(model.backbone, model.layers, weights, source.get("seed") or 0)
        if backbone.source.sha256 != source["sha256"]:
            raise PadimError(
                f"{path}: backbone weights differ from those the model was fitted with "
                f"(sha256 {backbone.source.sha256[:12]}... at {backbone.source.path}, expected {source['sha256'][:12]}...): "
                f"pass the original weights with weights=PATH (CLI: --weights PATH)"
            )
        if list(backbone.channels) != list(bb["channels"]):
            raise PadimError(f"{path}: backbone taps give {backbone.channels} channels, the file says {bb['channels']}")
        model._set_fitted_state(path, backbone, tensors, meta)
        return model

    def _set_fitted_state(self, path: Any, backbone: Backbone, tensors: dict, meta: dict) -> None:
        """Install checked tensors as the fitted state."""
        h, w = meta["feature_shape"]
        d, n_pos = int(meta["n_features"]), int(h) * int(w)
        n_total, pca = sum(backbone.channels), self.reduction == "pca"
        expected = {
            "mean": ((n_pos, d), torch.float64),
            "precision_cholesky": ((n_pos, d * (d + 1) // 2),
                                   torch.float16 if meta.get("precision_dtype") == "float16" else torch.float32),
            "channel_indices": ((n_total if pca else d,), torch.int64),
        }
        if pca:
            expected["projection"] = ((n_total, d), torch.float32)
        if meta.get("statistics"):
            expected["scatter"] = ((n_pos, d * (d + 1) // 2), torch.float64)
        if meta.get("frame") is not None:
            expected["frame_mean"] = ((2 * d,), torch.float64)
            expected["frame_scatter"] = ((d * (2 * d + 1),), torch.float64)  # 2d(2d+1)/2
        for name, (shape, dtype) in expected.items():
            t = tensors.get(name)
            if t is None or tuple(t.shape) != shape or t.dtype != dtype:
                got = "missing" if t is None else f"{tuple(t.shape)} {t.dtype}"
                raise PadimError(f"{path}: tensor {name!r} is {got}, metadata implies {shape} {dtype}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise PadimError(f"{path}: tensor {name!r} contains NaN or inf")
        idx = tensors["channel_indices"]
        if d and (int(idx.min()) < 0 or int(idx.max()) >= n_total):
            raise PadimError(f"{path}: channel indices out of range for this backbone")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise PadimError(f"{path}: channel indices must be sorted and unique")
        n = int(meta["n_samples_seen"])
        if n < 1:
            raise PadimError(f"{path}: model was fitted on {n} images")
        self.backbone_ = backbone
        self.channel_indices_ = idx
        self.net_ = PadimNet(backbone, idx, self.sigma, self.preprocess_.output_size).to(self.device)
        self.engine_ = None
        if tuple(self.net_.grid) != (int(h), int(w)):
            raise PadimError(f"{path}: the backbone gives a {self.net_.grid} feature grid, the file says {(h, w)}")
        self.components_ = tensors["projection"].to(self.device) if pca else None
        if pca:
            self.n_components_ = d
            self.net_.projection = self.components_
        self.feature_shape_ = (int(h), int(w))
        self.created_ = meta.get("created")
        mean = tensors["mean"].to(self.device)
        self.stats_ = None
        if meta.get("statistics"):
            self.stats_ = GaussianStats.from_packed(n, mean, tensors.pop("scatter").to(self.device))
        self.n_samples_seen_ = n
        stairs = staircase.from_packed(tensors.pop("precision_cholesky").to(self.device), d)
        self.net_.set_gaussians(mean, stairs)
        self.frame_stats_ = self._frame_from_file(path, tensors, meta, n)
        self.frame_ = None if self.frame_stats_ is None else FrameModel.from_stats(self.frame_stats_, float(self.eps))
        self.calibration_ = self._calibration_from_file(path, tensors, meta)

    def _frame_from_file(self, path: Any, tensors: dict, meta: dict, n: int) -> FrameStats | None:
        """The stored frame statistics (tensors already checked), or None with a warning for older files."""
        info = meta.get("frame")
        if info is None:
            warnings.warn(f"{path}: saved before the frame check (format v{meta.get('format_version')}): blank and "
                          f"foreign frames are not caught; refit to enable it", PadimWarning, stacklevel=4)
            return None
        contrast = info["contrast_min"]
        if not isinstance(contrast, (int, float)) or not math.isfinite(contrast) or contrast < 0:
            raise PadimError(f"{path}: frame contrast_min must be a finite number >= 0, got {contrast!r}")
        if info["n_images"] != n:
            raise PadimError(f"{path}: frame statistics of {info['n_images']!r} images, the model saw {n}")
        gaussian = GaussianStats.from_packed(n, tensors["frame_mean"][None].to(self.device),
                                             tensors["frame_scatter"][None].to(self.device))
        return FrameStats(gaussian, float(contrast))

    @staticmethod
    def _calibration_from_file(path: Any, tensors: dict, meta: dict) -> Calibration | None:
        """The stored calibration, checked, or None."""
        info = meta.get("calibration")
        if info is None:
            return None
        scores, pixels = tensors.get("calibration_image_scores"), tensors.get("calibration_pixel_sample")
        if scores is None or pixels is None or scores.ndim != 1 or pixels.ndim != 1 or len(scores) != info["n_images"]:
            raise PadimError(f"{path}: calibration tensors missing or inconsistent with the metadata")
        if not (torch.isfinite(scores).all() and torch.isfinite(pixels).all()):
            raise PadimError(f"{path}: calibration scores contain NaN or inf")
        frames = tensors.get("calibration_frame_scores")
        if frames is not None and (frames.shape != scores.shape or frames.dtype != torch.float64
                                   or not torch.isfinite(frames).all() or meta.get("frame") is None):
            raise PadimError(f"{path}: calibration frame scores inconsistent with the image scores or not finite")
        return Calibration(scores.numpy(), pixels.numpy(), float(info["fpr"]), str(info["source"]),
                           None if frames is None else frames.numpy())

    def __repr__(self) -> str:
        fitted = f", fitted on {self.n_samples_seen_} images" if self._is_fitted() else ""
        return f"PaDiM(backbone={self.backbone!r}, n_features={self.n_features!r}{fitted})"

