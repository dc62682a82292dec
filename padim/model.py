"""The PaDiM estimator: scikit-learn-style glue around the pure torch network (padim.network).

One owner for each piece of fitted state. `net_` (PadimNet) holds all that scoring reads, as its
buffers; `channel_indices_`, `components_`, `mean_`, `precision_cholesky_`, `feature_shape_` and
`embedding_dim_` only read them. `stats_` (GaussianStats; None once loaded without statistics) is
the running sum that fit, partial_fit and merge add to and the network's Gaussians are derived from;
`frame_stats_` likewise gives `frame_` (the frame check). `calibration_` holds the thresholds.
The network sets its own buffers (PadimNet.set_gaussians); `_set_fitted` is the one place the rest
is set, from statistics (fit, partial_fit, merge; padim.distributed through fit) or a model file (load).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from padim import fitting, modelfile, paper
from padim.backbone import DEFAULT_BACKBONE, Backbone, build_backbone
from padim.calibration import DEFAULT_FPR, Calibration, holdout_split
from padim.data import Batch, Preprocess, as_items, iter_batches, n_batches, progress
from padim.images import DEFAULT_MAX_PIXELS
from padim.embedding import positions_to_maps
from padim.lanes import lane_embeddings
from padim.engine import AUTO, Engine, build_engine, resolve
from padim.errors import PadimError, PadimWarning
from padim.frame import FrameModel, FrameStats
from padim.gaussian import GaussianStats, precision_factor
from padim.network import FittedNetworkViews, PadimNet, draw_channels
from padim.plan import Plan, make_plan
from padim.prediction import Prediction, Scored, add_verdicts, collect, scored_batches
from padim.utils.constraints import (PADIM_CONSTRAINTS, Check, CheckedParameters, check_memory, check_params, check_threshold,
                                    check_value, validate_params)
from padim.utils.cpus import available_cpus, torch_threads
from padim.utils.devices import check_device


class PaDiM(CheckedParameters, FittedNetworkViews):
    """PaDiM anomaly detector (Defard et al., 2020): one multivariate Gaussian per patch position.

    The defaults follow the paper: efficientnet_lite0 (real ImageNet weights that install offline)
    tapped at strides 4, 8, 16; resize 256 (bicubic), center crop 224; eps = 0.01; sigma = 4.
    Every parameter is checked against ``padim.utils.constraints.PADIM_CONSTRAINTS`` when the model
    is made, and again, with the device and the engine, before anything is fitted.

    Parameters
    ----------
    backbone : str
        A known backbone (padim.backbone.BACKBONES) or any timm model name (then ``layers`` is needed).
    layers : sequence of str or None
        Modules whose outputs are tapped, shallowest first; None: the backbone's paper taps.
    n_features : int, "all" or None
        Embedding channels kept: None the backbone's Rd default (100 for resnet18, 550 for
        wide_resnet50_2, every channel otherwise), "all" every channel, an int that many.
    reduction : {"random", "pca"}
        "random" keeps n_features seeded random channels (the paper's Rd); "pca" projects the
        embeddings on their n_features principal components, fitted on the training embeddings
        (paper Table II).
    eps : float
        Added to the diagonal of every covariance (the regulariser of Eq. 1).
    image_size : int or (int, int)
        Side, or (height, width), images are resized to.
    crop_size : int, (int, int) or None
        Center crop taken after the resize; None keeps the whole resized image.
    seed : int
        Seed of the Rd channels, the holdout split and random weights.
    device : str
        Torch device: "cpu", "cuda", "cuda:N" or "mps".
    batch_size : int
        Images per forward pass.
    weights : str, path or None
        None finds ImageNet weights offline, a path reads a .pth/.safetensors file, "random" gives
        seeded random weights (tests only).
    sigma : float
        Standard deviation, in pixels, of the Gaussian that smooths the anomaly maps (0: none).
    workers : int or None
        Background threads decoding images; None: padim.data.decode_threads decides.
    verbose : bool
        Progress bars and the engine line on stderr.
    holdout : float
        Fraction of the good training images (seeded) kept out of the fit to set the thresholds
        at the false-positive rate ``fpr``; 0 keeps none (``calibrate()`` does the same on a separate set).
    fpr : float
        Target false-positive rate of the thresholds, in (0, 1).
    engine : str
        Runtime of the backbone: "auto" (the fastest exact one installed, see padim.engine),
        "torch", "torch-fast", "onnxruntime" or "openvino"; any engine predicts with a model any
        other fitted.
    threads : int or None
        CPU threads of the engine; None: the CPUs this process may use (affinity and quota).
    max_pixels : int or None
        Largest image file decoded, checked from its header; None: no limit of padim's own.

    Attributes
    ----------
    preprocessing : Preprocess
        The resize, crop and normalisation these parameters define (exists before fit).
    backbone_ : Backbone
        The tapped backbone, with its channels, strides and weight source.
    channel_indices_ : torch.Tensor
        Sorted indices (int64) of the embedding channels kept (every channel with PCA).
    n_components_ : int
        Principal components kept (reduction="pca" only).
    components_ : torch.Tensor or None
        The PCA projection (D, d), float32; None with random channels.
    net_ : PadimNet
        The pure torch network holding the fitted Gaussians.
    engine_ : Engine or None
        The engine running the backbone, built on first use.
    stats_ : GaussianStats or None
        The streamed statistics (count, means, scatters); None for a model loaded without them.
    frame_stats_ : FrameStats or None
        Statistics of the frame check (padim.frame); None for files saved before it.
    frame_ : FrameModel or None
        The fitted frame check.
    calibration_ : Calibration or None
        Thresholds set by ``holdout`` or ``calibrate()``.
    feature_shape_ : (int, int)
        The feature grid (h, w) of the first tap.
    n_samples_seen_ : int
        Training images the statistics hold.
    created_ : str
        UTC time of the last fit, ISO 8601.
    mean_, precision_cholesky_, covariance_ : torch.Tensor
        Per-position means (P, d), inverse Cholesky factors W (P, d, d) with precision W^T W, and
        regularised covariances (P, d, d; needs the statistics).
    embedding_dim_ : int
        Dimension d of the patch embeddings.
    """

    _parameter_constraints = PADIM_CONSTRAINTS
    _parameter_checks = (Check(Preprocess.from_sizes, ("image_size", "crop_size")),  # the crop inside the image
                         Check(resolve, ("engine", "device")), Check(check_device, ("device",)))

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
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
        validate_params(self, checks=False)  # fit() checks again, with the devices

    # ----------------------------------------------------------------------------- set-up
    @property
    def preprocessing(self) -> Preprocess:
        """The preprocessing these parameters define."""
        return Preprocess.from_sizes(self.image_size, self.crop_size)

    def _init_network(self) -> None:
        """Build the backbone and draw the Rd channels (once, before the first batch)."""
        self._check_params()
        with torch_threads(1):  # small torch work: see padim.utils.cpus.torch_threads
            backbone = build_backbone(self.backbone, layers=self.layers, weights=self.weights, seed=self.seed)
            channels, n_components = draw_channels(backbone, self.n_features, self.reduction, self.seed)
        self.backbone_ = backbone
        if n_components is not None:
            self.n_components_ = n_components
        d = n_components or int(channels.numel())
        check_memory(self.preprocessing.output_size, backbone.strides[0], d)
        self.net_ = PadimNet(backbone, channels, self.sigma, self.preprocessing.output_size).to(self.device)
        self.engine_: Engine | None = None
        self.stats_: GaussianStats | None = None
        self.frame_stats_: FrameStats | None = None
        self.frame_: FrameModel | None = None
        self.n_samples_seen_ = 0

    # ----------------------------------------------------------------------------- fitting
    def fit(self, images: Any, *, shards: fitting.Shards = fitting.ONE_PROCESS) -> "PaDiM":
        """Fit the per-position Gaussians on images of good parts (replaces any previous fit); `shards` shares
        it between processes (padim.distributed): each adds its share, the lead one ends with the merged model."""
        self._init_network()
        self.calibration_: Calibration | None = None
        items = as_items(images)
        make_plan(self, len(items), measure=False).check()
        fit_items, held = self.split_holdout(items)
        stats, frames = self._statistics(shards.mine(fit_items), shards)
        if stats is None:  # not the lead process, which holds the merged statistics
            return self
        self._fit_statistics(stats, frames)
        if held:
            self.calibrate(held, source=f"{len(held)} held-out training images ({self.holdout:.0%}, seed {self.seed})")
        return self

    def plan(self, n_images: int, measure: bool = True) -> Plan:
        """Peak memory, file sizes and time per image of fitting n_images, before any image is read (builds the
        network; measure=True times one batch of zeros through the engine)."""
        if not hasattr(self, "net_"):
            self._init_network()
        return make_plan(self, n_images, measure)

    def split_holdout(self, items: list) -> tuple[list, list]:
        """(images to fit, good images held out for calibration): a seeded split by `holdout`."""
        return holdout_split(items, self.holdout, self.seed)

    def calibrate(self, good_images: Any, fpr: float | None = None, source: str | None = None) -> "PaDiM":
        """Set image and pixel thresholds at a false-positive rate on good images the fit has not seen."""
        fpr = self.fpr if fpr is None else fpr
        check_value("fpr", fpr, PADIM_CONSTRAINTS["fpr"])  # before any image is scored
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
        self._fit_statistics(*self._statistics(items, fitting.ONE_PROCESS))  # type: ignore[arg-type]
        self._discard_calibration()
        return self

    def _statistics(self, items: list, shards: fitting.Shards) -> tuple[GaussianStats | None, FrameStats | None]:
        """The model's statistics (zero ones before the first fit) plus those of items, merged over the shards.

        Every process but the lead one gets (None, None).
        """
        if self.reduction == "pca" and self.components_ is None:
            fitting.fit_projection(self.net_, self._embeddings(items, "pca"), shards, self.n_components_)
        stats, frames = self.stats_, self.frame_stats_
        if stats is None:
            stats = self.empty_stats()
            frames = FrameStats.empty(stats.dim, self.device)
        self.accumulate(items, stats, frames)
        return shards.merge(stats), None if frames is None else shards.merge_frames(frames)

    def empty_stats(self) -> GaussianStats:
        """Zero statistics of the right shape (the network's feature grid and embedding dimension)."""
        d = self.n_components_ if self.reduction == "pca" else int(self.channel_indices_.numel())
        return GaussianStats.empty(self.net_.grid[0] * self.net_.grid[1], d, self.device)

    def accumulate(self, items: list, stats: GaussianStats, frame: FrameStats | None = None) -> GaussianStats:
        """Add the embeddings of images to per-position statistics (and frame statistics), batch by batch."""
        return fitting.accumulate(self._embeddings(items, "fit"), stats, frame, self.preprocessing.std,
                                  grid=self.net_.grid, blocks=self.net_.descriptor_blocks)

    def _discard_calibration(self) -> None:
        """New statistics change the score distribution: thresholds set before no longer hold."""
        if getattr(self, "calibration_", None) is not None:
            warnings.warn("the model changed: its calibration was discarded, call calibrate() again",
                          PadimWarning, stacklevel=3)
        self.calibration_ = None

    def merge(self, other: "PaDiM") -> "PaDiM":
        """Add another model's statistics (fitted separately on other images) to this one."""
        self._require_fitted()
        other._require_fitted()
        if self.stats_ is None or other.stats_ is None:
            raise PadimError("both models need their statistics to merge (save with statistics=True)")
        fitting.check_mergeable(self, other)
        self.stats_.merge(other.stats_)
        self._fit_statistics(self.stats_, fitting.merged_frames(self.frame_stats_, other.frame_stats_))
        self._discard_calibration()
        return self

    def _fit_statistics(self, stats: GaussianStats, frames: FrameStats | None) -> None:
        """Derive the scoring state (mean, inverse Cholesky factor, frame check) from the statistics, once."""
        stairs = precision_factor(stats, float(self.eps))
        if not all(bool(torch.isfinite(blk.sum())) for blk in stairs):  # NaN/inf reach the sum: one pass, no mask
            raise PadimError(f"eps={float(self.eps):g} is too small for these features: the inverse covariance "
                             f"overflows float32 (use a larger eps; the paper's is {paper.EPSILON})")
        self.net_.set_gaussians(stats.mean.clone(), stairs)
        self._set_fitted(stats, frames, stats.n, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def _set_fitted(self, stats: GaussianStats | None, frames: FrameStats | None, n: int, created: str | None) -> None:
        """Install what goes with the network's fitted buffers: the one place it is set (see the module docstring)."""
        self.stats_, self.frame_stats_ = stats, frames
        self.frame_ = None if frames is None else FrameModel.from_stats(frames, float(self.eps))
        self.n_samples_seen_, self.created_ = n, created

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
            self.engine_ = build_engine(self.net_.features, self.preprocessing.output_size, name=self.engine,
                                        device=self.device, threads=self.threads)
            if self.verbose:
                print(f"engine: {self.engine_.describe()}", file=sys.stderr)
        return self.engine_

    def _batches(self, items: list, what: str) -> Iterable[Batch]:
        """The decoded batches of items, with a progress bar when verbose."""
        workers = self.workers
        if workers is None and self.engine_for_device().name in ("openvino", "onnxruntime") and available_cpus() >= 2:
            # Their threads run outside the GIL: one decoding thread overlaps them (+5-9% on 2 cores),
            # where beside torch's own OpenMP threads it costs a little.
            workers = 1
        batches = iter_batches(items, self.preprocessing, self.batch_size, workers=workers, max_pixels=self.max_pixels)
        return progress(batches, desc=what, total=n_batches(len(items), self.batch_size), verbose=self.verbose)

    def _embeddings(self, items: list, what: str) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Positions-first embeddings (P, B, d) of every batch, with a progress bar when verbose."""
        return lane_embeddings(self._batches(items, what), self.engine_for_device(), self.net_.project)

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
        return scored_batches(self._batches(as_items(images), "predict"), self.engine_for_device(), self.net_,
                              getattr(self, "frame_", None), self.preprocessing.std, self.device)

    def predict(self, images: Any, original_size: bool = False, image_threshold: float | None = None,
                pixel_threshold: float | None = None) -> Prediction:
        """Scores and anomaly maps (preprocessed grid or original sizes); verdicts when calibrated or given thresholds."""
        check_threshold("image_threshold", image_threshold)  # before any image is scored
        check_threshold("pixel_threshold", pixel_threshold)
        pred = collect(self.scored_batches(images), self.preprocessing if original_size else None)
        return add_verdicts(pred, getattr(self, "calibration_", None), image_threshold, pixel_threshold)

    def score_samples(self, images: Any) -> np.ndarray:
        """Image anomaly scores only (higher is more anomalous)."""
        return self.predict(images).scores

    # ----------------------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """What the model holds, JSON-ready (written into model files, shown by `padim info`)."""
        self._require_fitted()
        return modelfile.model_metadata(self)

    def save(self, path: str | os.PathLike, statistics: bool = False, half: bool = False) -> None:
        """Write the model atomically; statistics=True also stores what partial_fit/merge need.

        half=True stores the inverse Cholesky factors in float16 (half the size; scores change by
        about 1e-3 relative, see benchmarks/); they are computed in float32 after loading.
        """
        modelfile.write_model(path, *modelfile.model_contents(self, path, statistics, half))

    @classmethod
    def load(
        cls, path: str | os.PathLike, weights: str | os.PathLike | None = None, device: str = "cpu", **params: Any
    ) -> "PaDiM":
        """Read a model file, rebuild its backbone and check the weights are the ones it was fitted with."""
        check_params(params, PADIM_CONSTRAINTS)  # the caller's values, refused as such (not as the file's) and before reading it
        check_device(device)
        tensors, meta = modelfile.read_contents(path)
        with modelfile.file_problems(path):
            model = cls(**modelfile.estimator_params(meta, weights), device=device, **params)
            model._check_params()
            model._set_file_state(path, modelfile.checked_backbone(path, meta, tensors, model), tensors, meta)
        return model

    def _set_file_state(self, path: Any, backbone: Backbone, tensors: dict, meta: dict) -> None:
        """Install a checked file's network, statistics, frame check and calibration as the fitted state."""
        self.backbone_, self.engine_ = backbone, None
        self.net_ = modelfile.network(path, backbone, tensors, meta, self.sigma, self.preprocessing.output_size,
                                      self.device)
        if self.reduction == "pca":
            self.n_components_ = int(meta["n_features"])
        self._set_fitted(modelfile.statistics_from_file(tensors, meta, self.device),
                         modelfile.frame_from_file(path, tensors, meta, self.device),
                         int(meta["n_samples_seen"]), meta.get("created"))
        self.calibration_ = modelfile.calibration_from_file(path, tensors, meta)

    def __repr__(self) -> str:
        fitted = f", fitted on {self.n_samples_seen_} images" if self._is_fitted() else ""
        return f"PaDiM(backbone={self.backbone!r}, n_features={self.n_features!r}{fitted})"
