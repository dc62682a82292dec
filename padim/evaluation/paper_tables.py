"""Paper reproduction: configurations named after the paper's tables, run and evaluated (reports: paper_report)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from padim import paper
from padim.images import read_image
from padim.evaluation.datasets import Split
from padim.evaluation.transforms import nonaligned, transform_masks
from padim.errors import InputError
from padim.evaluation.metrics import au_pro, image_auroc, pixel_auroc
from padim.model import PaDiM
from padim.plan import peak_rss_mb, reset_peak_rss


@dataclass(frozen=True)
class Config:
    """A model configuration of the paper, and the tables that report it.

    Parameters
    ----------
    name : str
        The configuration's name in CONFIGS and in paper_results.json.
    backbone, layers, n_features, reduction
        The model's parameters (as PaDiM's).
    ensemble : tuple of layer tuples
        Table I "Layer 1+2+3": one single-layer model per entry, their maps summed; () for one model.
    tables : tuple of str
        The paper's tables that report it, first the one compared with.
    detection_only : bool
        The paper reports image-level results only.
    method : str
        "padim", or a paper baseline: "spade", "vae".

    Attributes
    ----------
    The parameters, as given.
    """

    name: str
    backbone: str = "resnet18"
    layers: tuple[str, ...] | None = None
    n_features: int | str | None = None
    reduction: str = "random"
    ensemble: tuple[tuple[str, ...], ...] = ()
    tables: tuple[str, ...] = ()
    detection_only: bool = False
    method: str = "padim"


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("layer1", layers=("layer1",), n_features="all", tables=("table_I",)),
        Config("layer2", layers=("layer2",), n_features="all", tables=("table_I",)),
        Config("layer3", layers=("layer3",), n_features="all", tables=("table_I",)),
        Config("layer-sum", n_features="all", ensemble=(("layer1",), ("layer2",), ("layer3",)), tables=("table_I",)),
        Config("r18-all", n_features="all", tables=("table_I", "table_II")),
        Config("r18-rd100", n_features=paper.RD_RESNET18, tables=("table_III", "table_II")),
        Config("r18-rd200", n_features=200, tables=("table_II",)),
        Config("r18-pca100", n_features=100, reduction="pca", tables=("table_II",)),
        Config("r18-pca200", n_features=200, reduction="pca", tables=("table_II",)),
        Config("wr50-rd550", backbone="wide_resnet50_2", n_features=paper.RD_WIDE_RESNET50, tables=("table_III",)),
        Config("effb5", backbone="efficientnet_b5", n_features="all", tables=("table_V",), detection_only=True),
        Config("lite0", backbone="efficientnet_lite0", n_features="all"),
        Config("spade", backbone=paper.SPADE_BACKBONE, method="spade", tables=("table_III", "table_IV")),
        Config("vae", backbone=paper.VAE_ENCODER, method="vae", tables=("table_III",)),
    )
}
METHODS = ("padim", "spade", "vae")


def paper_results() -> dict[str, Any]:
    """The paper's published numbers (padim/evaluation/paper_results.json)."""
    return json.loads(resources.files("padim.evaluation").joinpath("paper_results.json").read_text())


def paper_row(config: Config, table: str | None = None) -> tuple[str | None, dict[str, list]]:
    """(table, {category or group: [pixel AUROC, PRO]}) the paper reports for a configuration."""
    results = paper_results()
    for name in ([table] if table else list(config.tables)):
        row = results.get(name, {}).get("rows", {}).get(config.name)
        if row:
            return name, row
    return None, {}


def config_for(name: str) -> Config:
    """A configuration by its paper name."""
    if name not in CONFIGS:
        raise InputError(f"unknown config {name!r}: choose one of {', '.join(CONFIGS)}")
    return CONFIGS[name]


# ----------------------------------------------------------------------------- evaluation
def score_split(
    predict: Callable[[list], tuple[np.ndarray, np.ndarray]], split: Split, masks: np.ndarray, images: list
) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AU-PRO of one test set (metrics that need both classes are skipped when absent)."""
    maps, scores = predict(images)
    labels = np.array([s.label for s in split.test])
    out: dict[str, float] = {"n_test": float(len(labels))}
    if 0 < labels.sum() < len(labels):
        out["image_auroc"] = image_auroc(labels, scores)
    if masks.any() and not masks.all():
        out["pixel_auroc"] = pixel_auroc(masks, maps)
        out["au_pro"] = au_pro(masks, maps)
    return out


def evaluate(model: PaDiM, split: Split) -> dict[str, float]:
    """Metrics of a fitted model on a split's test set (masks transformed like the images)."""
    masks = transform_masks(split.test, model.preprocessing)

    def predict(images: list) -> tuple[np.ndarray, np.ndarray]:
        pred = model.predict(images)
        return pred.maps, pred.scores

    return score_split(predict, split, masks, [s.image for s in split.test])


@dataclass
class CategoryResult:
    """One configuration on one category: metrics (mean over seeds), their standard errors and costs.

    Parameters
    ----------
    category : str
        The split's name.
    metrics, sem : dict of str to float
        Each metric's mean over seeds, and its standard error (empty for one seed).
    fit_seconds, predict_seconds : float
        Mean wall time of fitting and of predicting the test set.
    peak_fit_mb, peak_predict_mb : float
        Peak resident memory while fitting and while predicting.
    n_train, seeds : int
        Training images and seeds.

    Attributes
    ----------
    The parameters, as given.
    """

    category: str
    metrics: dict[str, float]
    sem: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    peak_fit_mb: float = 0.0
    peak_predict_mb: float = 0.0
    n_train: int = 0
    seeds: int = 1


@dataclass
class Options:
    """How to run a benchmark: device, batch size, seeds, non-aligned protocol, preprocessing, weights.

    Parameters
    ----------
    device, batch_size, image_size, crop_size, weights, verbose
        Passed to every model (as PaDiM's parameters).
    seeds : int
        Seeds 0 .. seeds-1 each fit and evaluate; the results are their means.
    non_aligned : bool
        The non-aligned protocol of Section V-C.
    vae_epochs, vae_images : int
        The VAE's epochs and augmented training images per epoch.
    checkpoints : str or None
        Folder of the VAE's training checkpoints (resumed when present).

    Attributes
    ----------
    The parameters, as given.
    """

    device: str = "cpu"
    batch_size: int = 32
    seeds: int = 1
    non_aligned: bool = False
    image_size: int | tuple[int, int] = paper.MVTEC_RESIZE
    crop_size: int | tuple[int, int] | None = paper.MVTEC_CROP
    weights: str | None = None
    verbose: bool = False
    vae_epochs: int = paper.VAE_EPOCHS
    vae_images: int = paper.VAE_TRAIN_IMAGES
    checkpoints: str | None = None


def _models(config: Config, options: Options, seed: int, tag: str = "") -> list[Any]:
    """The model (or, for layer-sum, the single-layer models) of a configuration; fit/predict/preprocessing alike."""
    size, crop = options.image_size, options.crop_size
    if options.non_aligned:  # images arrive already resized, rotated and cropped
        size, crop = paper.MVTEC_CROP, None
    common = dict(device=options.device, weights=options.weights, seed=seed, verbose=options.verbose)
    if config.method == "spade":
        from padim.baselines.spade import Spade

        return [Spade(backbone=config.backbone, image_size=size, crop_size=crop, batch_size=options.batch_size, **common)]
    if config.method == "vae":
        return [_vae(options, tag, seed, common)]
    params = dict(backbone=config.backbone, n_features=config.n_features, reduction=config.reduction,
                  image_size=size, crop_size=crop, batch_size=options.batch_size, **common)
    layer_sets = config.ensemble or (config.layers,)
    return [PaDiM(layers=layers, **params) for layers in layer_sets]


def _vae(options: Options, tag: str, seed: int, common: dict[str, Any]) -> Any:
    """The paper's VAE baseline with the benchmark's training budget and checkpoint file."""
    from padim.baselines.vae import VAE

    if options.non_aligned:
        raise InputError("the non-aligned protocol (Section V-C) is defined for PaDiM and SPADE, not for the VAE")
    checkpoint = None
    if options.checkpoints:
        os.makedirs(options.checkpoints, exist_ok=True)
        checkpoint = os.path.join(options.checkpoints, f"vae-{tag or 'model'}-seed{seed}.safetensors")
    return VAE(epochs=options.vae_epochs, n_train=options.vae_images, checkpoint=checkpoint, **common)


def _nonaligned_inputs(split: Split, seed: int) -> tuple[list, list, np.ndarray]:
    """Section V-C: every train and test image (and mask) randomly rotated (+-10 deg) and cropped, seeded."""
    rng = np.random.default_rng(seed)
    train = [nonaligned(read_image(p), None, rng)[0] for p in split.train]
    test, masks = [], []
    for sample in split.test:
        image = read_image(sample.image)
        img, mask = nonaligned(image, sample.load_mask(tuple(image.shape[1:])), rng)
        test.append(img)
        masks.append(mask)
    return train, test, np.stack(masks)


def run_category(config: Config, split: Split, options: Options) -> CategoryResult:
    """Fit and evaluate one configuration on one category, over options.seeds seeds."""
    runs: list[dict[str, float]] = []
    fit_s = predict_s = peak_fit = peak_predict = 0.0
    for seed in range(options.seeds):
        models = _models(config, options, seed, split.name)
        if options.non_aligned:
            train, test, masks = _nonaligned_inputs(split, seed)
        else:
            train, test = list(split.train), [s.image for s in split.test]
            masks = transform_masks(split.test, models[0].preprocessing)
        reset_peak_rss()
        t0 = time.perf_counter()
        for model in models:
            model.fit(train)
        fit_s += time.perf_counter() - t0
        peak_fit = max(peak_fit, peak_rss_mb())
        reset_peak_rss()
        t0 = time.perf_counter()

        def predict(images: list) -> tuple[np.ndarray, np.ndarray]:
            if len(models) == 1:  # the method's own image score (SPADE: kNN distance, not the map's max)
                pred = models[0].predict(images)
                return pred.maps, pred.scores
            maps = sum(m.predict(images).maps for m in models)  # layer-sum: the maps add up
            return maps, maps.reshape(len(maps), -1).max(axis=1)

        runs.append(score_split(predict, split, masks, test))
        predict_s += time.perf_counter() - t0
        peak_predict = max(peak_predict, peak_rss_mb())
        del models
    keys = runs[0].keys()
    mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    sem = {k: float(np.std([r[k] for r in runs], ddof=1) / math.sqrt(len(runs))) for k in keys} if len(runs) > 1 else {}
    return CategoryResult(split.name, mean, sem, fit_s / len(runs), predict_s / len(runs), peak_fit, peak_predict,
                          len(split.train), len(runs))


def run_benchmark(config: Config, splits: Iterable[Split], options: Options,
                  on_result: Callable[[CategoryResult], None] | None = None) -> list[CategoryResult]:
    """Run a configuration on every split."""
    results = []
    for split in splits:
        results.append(run_category(config, split, options))
        if on_result:
            on_result(results[-1])
    return results
