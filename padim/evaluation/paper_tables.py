"""Paper reproduction: configurations named after the paper's tables, evaluated beside its numbers."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch

from padim import paper
from padim.images import read_image
from padim.evaluation.datasets import MVTEC_TEXTURES, Split
from padim.evaluation.transforms import nonaligned, transform_masks
from padim.errors import InputError
from padim.evaluation.metrics import au_pro, image_auroc, pixel_auroc
from padim.model import PaDiM
from padim.plan import peak_rss_mb, reset_peak_rss  # noqa: F401 - measured here, and by benchmarks/


@dataclass(frozen=True)
class Config:
    """A model configuration of the paper, and the tables that report it."""

    name: str
    backbone: str = "resnet18"
    layers: tuple[str, ...] | None = None
    n_features: int | str | None = None
    reduction: str = "random"
    ensemble: tuple[tuple[str, ...], ...] = ()  # Table I "Layer 1+2+3": sum of single-layer models' maps
    tables: tuple[str, ...] = ()
    detection_only: bool = False
    method: str = "padim"  # "padim", or a paper baseline: "spade", "vae"


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


# ----------------------------------------------------------------------------- memory
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
    """One configuration on one category: metrics (mean over seeds), their standard errors and costs."""

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
    """How to run a benchmark: device, batch size, seeds, non-aligned protocol, preprocessing, weights."""

    device: str = "cpu"
    batch_size: int = 32
    seeds: int = 1
    non_aligned: bool = False
    image_size: int | tuple[int, int] = paper.MVTEC_RESIZE
    crop_size: int | tuple[int, int] | None = paper.MVTEC_CROP
    weights: str | None = None
    verbose: bool = False
    vae_epochs: int = paper.VAE_EPOCHS
    vae_images: int = paper.VAE_TRAIN_IMAGES  # augmented training images per epoch
    checkpoints: str | None = None  # folder for VAE training checkpoints (resumed when present)


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


# ----------------------------------------------------------------------------- report
def group_means(results: list[CategoryResult]) -> dict[str, dict[str, float]]:
    """Mean metrics over texture classes, object classes and all classes (the paper's summary rows)."""
    groups = {
        "texture": [r for r in results if r.category in MVTEC_TEXTURES],
        "object": [r for r in results if r.category not in MVTEC_TEXTURES],
        "all": results,
    }
    out = {}
    for name, members in groups.items():
        if members and (name == "all" or len(members) < len(results)):
            keys = set.intersection(*(set(r.metrics) for r in members))
            out[name] = {k: float(np.mean([r.metrics[k] for r in members])) for k in sorted(keys)}
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _paper_pair(row: dict[str, list], key: str) -> tuple[float | None, float | None]:
    values = row.get(key) or [None, None]
    return values[0], values[1]


def _diff(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None:
        return "-"
    return f"{100 * ours - theirs:+.1f}"


def markdown_table(config: Config, results: list[CategoryResult], table: str | None = None,
                   options: Options | None = None) -> str:
    """Per-category table with the paper's value beside ours and the difference, then the group means."""
    table_name, row = paper_row(config, table)
    source = f"paper {table_name.replace('_', ' ')}" if table_name else "paper: no value for this configuration"
    if options is not None and options.weights == "random":
        source += "; RANDOM backbone weights, not ImageNet: not comparable with the paper"
    if options is not None and options.non_aligned:
        source += "; non-aligned protocol (Section V-C)"
    head = ("| category | image AUROC | pixel AUROC | paper | diff | AU-PRO | paper | diff | fit s | predict s "
            "| peak fit MB | peak predict MB |")
    lines = [f"**{config.name}** ({source}; percentages; means over {results[0].seeds if results else 1} seed(s))",
             "", head, "|" + "---|" * 12]

    def line(name: str, m: dict[str, float], extra: str) -> str:
        pa, pp = _paper_pair(row, name)
        pix, pro = m.get("pixel_auroc"), m.get("au_pro")
        return (f"| {name} | {_pct(m.get('image_auroc'))} | {_pct(pix)} | {pa if pa is not None else '-'} | "
                f"{_diff(pix, pa)} | {_pct(pro)} | {pp if pp is not None else '-'} | {_diff(pro, pp)} | {extra}")

    for r in results:
        lines.append(line(r.category, r.metrics, f"{r.fit_seconds:.1f} | {r.predict_seconds:.1f} | "
                                                  f"{r.peak_fit_mb:.0f} | {r.peak_predict_mb:.0f} |"))
    for name, m in group_means(results).items():
        lines.append(line(f"{name}", m, " |  |  |  |").replace(f"| {name} |", f"| **{name}** |", 1))
    if results and results[0].seeds > 1:
        lines += ["", "Standard error of the mean over seeds (pixel AUROC, AU-PRO), per category: " + ", ".join(
            f"{r.category} {100 * r.sem.get('pixel_auroc', 0):.2g}/{100 * r.sem.get('au_pro', 0):.2g}" for r in results)]
    return "\n".join(lines) + "\n"


def results_json(config: Config, results: list[CategoryResult], options: Options,
                 table: str | None = None) -> dict[str, Any]:
    """Everything a report needs, JSON-ready."""
    table_name, row = paper_row(config, table)
    return {
        "config": asdict(config),
        "options": asdict(options),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "categories": [asdict(r) for r in results],
        "means": group_means(results),
        "paper": {"table": table_name, "values": row},
    }


def config_for(name: str) -> Config:
    """A configuration by its paper name."""
    if name not in CONFIGS:
        raise InputError(f"unknown config {name!r}: choose one of {', '.join(CONFIGS)}")
    return CONFIGS[name]


def combined_table(runs: list[tuple[Config, list[CategoryResult]]], table: str | None = None,
                   options: Options | None = None) -> str:
    """Methods side by side: each one's pixel AUROC and AU-PRO beside the paper's value for it."""
    rows = [(config, paper_row(config, table)[1], {r.category: r.metrics for r in results}, group_means(results))
            for config, results in runs]
    names = list(dict.fromkeys(r.category for _, results in runs for r in results))
    groups = list(dict.fromkeys(g for *_, means in rows for g in means))
    head = "| category | " + " | ".join(f"{c.name} pixel AUROC | paper | {c.name} AU-PRO | paper" for c, *_ in rows) + " |"
    caption = "Methods side by side (percentages; paper: Table III for MVTec AD, Table IV for STC)"
    if options is not None and options.weights == "random":
        caption += "; RANDOM backbone weights, not ImageNet: not comparable with the paper"
    lines = [caption, "", head, "|" + "---|" * (1 + 4 * len(rows))]

    def cells(paper_values: dict[str, list], metrics: dict[str, float] | None, name: str) -> str:
        pa, pp = _paper_pair(paper_values, name)
        m = metrics or {}
        return " | ".join([_pct(m.get("pixel_auroc")), _num(pa), _pct(m.get("au_pro")), _num(pp)])

    for name in names:
        lines.append(f"| {name} | " + " | ".join(cells(pv, per.get(name), name) for _, pv, per, _ in rows) + " |")
    for group in groups:
        lines.append(f"| **{group}** | " + " | ".join(cells(pv, means.get(group), group) for _, pv, _, means in rows) + " |")
    return "\n".join(lines) + "\n"


def paper_table(runs: list[tuple[Config, list[CategoryResult]]], table: str = "table_III",
                options: Options | None = None) -> str:
    """The paper's table with every one of its columns: ours beside the paper where we ran it, else quoted.

    Methods we did not run (AE-SSIM, AE-L2, Student, Patch SVDD, ...) show the paper's numbers, marked
    "quoted": they are transcribed, not reproduced. Cells are (pixel AUROC, PRO) percentages.
    """
    spec = paper_results()[table]
    ours = {config.name: ({r.category: r.metrics for r in results}, group_means(results)) for config, results in runs}
    columns = list(spec["columns"]) + [c.name for c, _ in runs if c.name not in spec["columns"]]
    heads = [spec["column_names"].get(c, c) + ("" if c in ours else " (quoted)") for c in columns]
    caption = f"{spec['caption']}: ours / paper where run here, the paper's value (quoted) elsewhere"
    if options is not None and options.weights == "random":
        caption += "; RANDOM backbone weights, not ImageNet: not comparable with the paper"
    names = list(dict.fromkeys([r.category for _, results in runs for r in results]))
    groups = list(dict.fromkeys(g for per, means in ours.values() for g in means))

    def cell(column: str, name: str) -> str:
        pair = "(" + ", ".join(_num(v) for v in _paper_pair(spec["rows"].get(column, {}), name)) + ")"
        if column not in ours:
            return pair
        per, means = ours[column]
        m = per.get(name) or means.get(name) or {}
        return f"({_pct(m.get('pixel_auroc'))}, {_pct(m.get('au_pro'))}) / {pair}"

    lines = [caption, "", "| category | " + " | ".join(heads) + " |", "|" + "---|" * (1 + len(columns))]
    for name in names + groups:
        label = name if name in names else f"**{name}**"
        lines.append(f"| {label} | " + " | ".join(cell(c, name) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value}"
