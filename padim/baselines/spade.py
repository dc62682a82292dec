"""SPADE (Cohen & Hoshen, 2020), the PaDiM paper's kNN baseline: image kNN score, nearest-patch pixel map."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from padim import paper
from padim.backbone import build_backbone
from padim.data import Batch, Preprocess, as_items, check_finite, iter_batches
from padim.errors import NotFittedError, PadimError
from padim.prediction import Prediction, Scored, collect
from padim.scoring import gaussian_blur, upsample
from padim.utils.constraints import (BOOL, COMMON_CONSTRAINTS, LAYERS, NON_NEGATIVE, POSITIVE_INT, Check,
                                    CheckedParameters, Rule)

# timm's global average pool: (B, C), already flattened, run after the last stage.
POOL_TAP = "global_pool"
# Largest (queries x gallery rows) float32 block of squared distances held at once.
CHUNK_BYTES = 256 * 2**20
FEATURE_MAP_TAPS = Rule(lambda v: LAYERS.accepts(v) and POOL_TAP not in v, f"{LAYERS.text}, not {POOL_TAP!r} (it is added)")


def chunk_rows(n_queries: int, budget: int = CHUNK_BYTES) -> int:
    """Gallery rows per chunk so that an (n_queries, rows) float32 block stays within budget bytes."""
    return max(1, budget // (4 * max(1, n_queries)))


def nearest_distances(
    queries: torch.Tensor, gallery: torch.Tensor, k: int = 1, chunk: int | None = None
) -> torch.Tensor:
    """Mean Euclidean distance of each (Q, C) query to its k nearest (G, C) gallery rows, in gallery chunks."""
    if gallery.shape[0] == 0:
        raise PadimError("nearest-neighbour search over an empty gallery")
    k = max(1, min(int(k), gallery.shape[0]))
    chunk = chunk or chunk_rows(queries.shape[0])
    dtype = torch.promote_types(queries.dtype, torch.float32)
    # |t|^2 + |g|^2 - 2 t.g cancels badly when the features share a large offset (ReLU outputs):
    # distances are translation invariant, so centre both sides on the queries' mean first.
    centre = queries.to(dtype).mean(dim=0)
    q = queries.to(dtype) - centre
    best: torch.Tensor | None = None  # smallest |g|^2 - 2 t.g so far; |t|^2 is added at the end
    for start in range(0, gallery.shape[0], chunk):
        g = gallery[start : start + chunk].to(dtype) - centre
        part = torch.addmm(g.square().sum(dim=1)[None], q, g.T, alpha=-2.0)
        if k == 1:
            part = part.amin(dim=1, keepdim=True)
            best = part if best is None else torch.minimum(best, part)
        else:
            both = part if best is None else torch.cat([best, part], dim=1)
            best = both.topk(min(k, both.shape[1]), dim=1, largest=False).values
    assert best is not None
    squared = (best + q.square().sum(dim=1, keepdim=True)).clamp_(min=0.0)
    return squared.sqrt().mean(dim=1)


def knn_images(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices), both (B, K) ascending, of the K = min(k, N) nearest (N, C) gallery rows (float64)."""
    k = max(1, min(int(k), gallery.shape[0]))
    dist = torch.cdist(queries.double(), gallery.double(), compute_mode="donot_use_mm_for_euclid_dist")
    values, indices = dist.topk(k, dim=1, largest=False, sorted=True)
    return values, indices


def patch_rows(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) feature maps as (B, h*w, C) rows, one per position."""
    return maps.flatten(2).transpose(1, 2).contiguous()


def pooled(feature: torch.Tensor) -> torch.Tensor:
    """The global average-pooled feature (B, C) of a pooled or spatial (B, C, h, w) tap."""
    return feature if feature.ndim == 2 else feature.mean(dim=(2, 3))


class Spade(CheckedParameters):
    """SPADE (Cohen & Hoshen, 2020) as reproduced in the PaDiM paper: kNN image score, nearest-patch pixel map.

    The image score is the mean distance of the image's global average-pooled feature to those of its
    K = min(k_images, N) nearest training images. The pixel map is, per tapped layer, each position's
    (mean of the k_patches smallest) distance to every position of those K images' feature maps,
    resized bicubically, averaged over layers and Gaussian-smoothed.

    Parameters
    ----------
    backbone : str
        A known backbone or timm model name (the paper's: wide_resnet50_2).
    layers : sequence of str
        Feature-map taps, shallowest first ('global_pool' is added for the image score).
    k_images : int
        Nearest training images whose maps form the patch gallery, and whose distances make the image score.
    k_patches : int
        Nearest gallery patches averaged into a pixel's distance.
    image_size : int or (int, int)
        Side, or (height, width), images are resized to.
    crop_size : int, (int, int) or None
        Center crop taken after the resize; None keeps the whole resized image.
    sigma : float
        Standard deviation, in pixels, of the Gaussian that smooths the maps (0: none).
    device : str
        Torch device.
    batch_size : int
        Images per forward pass.
    weights : str, path or None
        As in PaDiM: None finds ImageNet weights offline, a path reads a file, "random" gives seeded
        random weights (tests only).
    seed : int
        Seed of random weights.
    workers : int or None
        Background threads decoding images; None: padim.data.decode_threads decides.
    half : bool
        Store the training maps in float16 (distances are still computed in float32).
    verbose : bool
        Progress bars on stderr.

    Attributes
    ----------
    preprocessing : Preprocess
        The resize, crop and normalisation these parameters define (exists before fit).
    backbone_ : Backbone
        The tapped backbone, the pooled tap last.
    global_features_ : torch.Tensor
        Pooled features (N, C) of the training images, float32.
    train_maps_ : list of torch.Tensor
        Per layer, the training images' feature maps as (N, h*w, C) rows.
    feature_shapes_ : list of (int, int)
        Per layer, its feature grid.
    train_names_ : list of str
        The training images' names.
    n_samples_seen_ : int
        Training images held.
    """

    _parameter_constraints = {
        **COMMON_CONSTRAINTS,
        "layers": [FEATURE_MAP_TAPS],
        "k_images": [POSITIVE_INT],
        "k_patches": [POSITIVE_INT],
        "sigma": [NON_NEGATIVE],
        "half": [BOOL],
    }
    _parameter_checks = (Check(Preprocess.from_sizes, ("image_size", "crop_size")),)  # the crop inside the image

    def __init__(
        self,
        backbone: str = paper.SPADE_BACKBONE,
        *,
        layers: tuple[str, ...] = paper.RESNET_LAYERS,
        k_images: int = paper.SPADE_K_IMAGES,
        k_patches: int = paper.SPADE_K_PATCHES,
        image_size: int | tuple[int, int] = paper.MVTEC_RESIZE,
        crop_size: int | tuple[int, int] | None = paper.MVTEC_CROP,
        sigma: float = paper.GAUSSIAN_SIGMA,
        device: str = "cpu",
        batch_size: int = 32,
        weights: str | os.PathLike | None = None,
        seed: int = 0,
        workers: int | None = None,
        half: bool = False,
        verbose: bool = False,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.k_images = k_images
        self.k_patches = k_patches
        self.image_size = image_size
        self.crop_size = crop_size
        self.sigma = sigma
        self.device = device
        self.batch_size = batch_size
        self.weights = weights
        self.seed = seed
        self.workers = workers
        self.half = half
        self.verbose = verbose

    @property
    def preprocessing(self) -> Preprocess:
        """The preprocessing these parameters define."""
        return Preprocess.from_sizes(self.image_size, self.crop_size)

    def _require_fitted(self) -> None:
        """Raise unless fit() has run."""
        if not hasattr(self, "global_features_"):
            raise NotFittedError("this Spade model is not fitted yet: call fit() first")

    # ----------------------------------------------------------------------------- features
    def _features(self, items: list, what: str) -> Iterator[tuple[Batch, list[torch.Tensor], torch.Tensor]]:
        """(batch, layer maps (B, C, h, w), pooled features (B, C)) per batch, with a progress bar when verbose."""
        from tqdm.auto import tqdm

        batches = iter_batches(items, self.preprocessing, self.batch_size, workers=self.workers)
        with tqdm(total=len(items), desc=what, unit="img", disable=not self.verbose, leave=False) as bar:
            for batch in batches:
                with torch.no_grad():
                    taps = self.backbone_.extractor(batch.pixels.to(self.device))
                maps, glob = [t.float() for t in taps[:-1]], pooled(taps[-1]).float()
                for t in (*maps, glob):
                    check_finite(t, batch)
                yield batch, maps, glob
                bar.update(len(batch.names))

    # ----------------------------------------------------------------------------- fitting
    def fit(self, images: Any) -> "Spade":
        """Extract and keep every training image's global feature and layer maps (replaces any previous fit)."""
        self._check_params()
        items = as_items(images)
        self.backbone_ = build_backbone(self.backbone, layers=(*self.layers, POOL_TAP), weights=self.weights, seed=self.seed)
        self.backbone_.extractor.to(self.device)
        store = torch.float16 if self.half else torch.float32
        glob_parts: list[torch.Tensor] = []
        map_parts: list[list[torch.Tensor]] = [[] for _ in self.layers]
        for batch, maps, glob in self._features(items, "fit"):
            glob_parts.append(glob)
            for parts, m in zip(map_parts, maps):
                rows = patch_rows(m).to(store)
                if self.half:
                    check_finite(rows, batch, "float16 storage overflows on NaN/inf features")
                parts.append(rows)
            self.feature_shapes_ = [tuple(int(s) for s in m.shape[2:]) for m in maps]
        self.global_features_ = torch.cat(glob_parts)  # (N, C) float32
        self.train_maps_ = [torch.cat(parts) for parts in map_parts]  # per layer (N, h*w, C)
        self.train_names_ = [it.name for it in items]
        self.n_samples_seen_ = len(items)
        return self

    # ----------------------------------------------------------------------------- prediction
    def predict(self, images: Any) -> Prediction:
        """Image scores (N,) and anomaly maps (N, H, W) on the preprocessed grid, float32."""
        self._require_fitted()
        return collect(self._scored(as_items(images)))

    def _scored(self, items: list) -> Iterator[Scored]:
        """(batch, maps, scores, no extras) of every batch."""
        for batch, batch_maps, glob in self._features(items, "predict"):
            self._check_grid(batch, batch_maps)
            distances, neighbours = knn_images(glob, self.global_features_, self.k_images)
            yield batch, self.anomaly_maps(batch_maps, neighbours), distances.mean(dim=1).float(), {}

    def _check_grid(self, batch: Batch, maps: list[torch.Tensor]) -> None:
        """Refuse feature grids that differ from the training ones."""
        grids = [tuple(int(s) for s in m.shape[2:]) for m in maps]
        if grids != list(self.feature_shapes_):
            raise PadimError(f"{batch.names[0]}: feature grids {grids} do not match the model's {self.feature_shapes_}")

    def anomaly_maps(self, maps: list[torch.Tensor], neighbours: torch.Tensor) -> torch.Tensor:
        """Smoothed (B, H, W) maps from test layer maps and each image's (B, K) nearest training images."""
        size = self.preprocessing.output_size
        layer_maps = [upsample(self.patch_distances(l, m, neighbours), size) for l, m in enumerate(maps)]
        return gaussian_blur(torch.stack(layer_maps).mean(dim=0), self.sigma)

    def patch_distances(self, layer: int, maps: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """(B, h, w) nearest-patch distances at one layer, the gallery being the neighbours' maps."""
        h, w = self.feature_shapes_[layer]
        rows, train = patch_rows(maps), self.train_maps_[layer]
        out = [nearest_distances(q, train[idx].flatten(0, 1), self.k_patches) for q, idx in zip(rows, neighbours)]
        return torch.stack(out).reshape(-1, h, w)

    def __repr__(self) -> str:
        fitted = f", fitted on {self.n_samples_seen_} images" if hasattr(self, "global_features_") else ""
        return f"Spade(backbone={self.backbone!r}, k_images={self.k_images}, k_patches={self.k_patches}{fitted})"
