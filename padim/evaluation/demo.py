"""The offline demo: real texture photos, synthetic defects, the default model, metrics and overlays."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from padim.utils.atomic import atomic_write
from padim.images import read_image
from padim.evaluation.metrics import image_auroc, pixel_auroc
from padim.model import PaDiM
from padim.reporting.overlay import colour_scale, heatmap_overlay, save_png, side_by_side
from padim.evaluation.synthetic import TEXTURES, load_split, make_inspection_set

N_TRAIN, N_TEST_GOOD, N_TEST_DEFECT = 60, 20, 40


@dataclass
class DemoResult:
    """One texture's figures."""

    texture: str
    n_train: int
    n_test_good: int
    n_test_defect: int
    image_auroc: float
    pixel_auroc: float
    fit_seconds: float
    predict_seconds: float


def run_texture(root: Path, texture: str, verbose: bool, seed: int = 0) -> DemoResult:
    """Build one texture's inspection set, fit on its good parts, score its test set, write overlays."""
    category = make_inspection_set(root / "data", texture, n_train=N_TRAIN, n_test_good=N_TEST_GOOD,
                                   n_test_defect=N_TEST_DEFECT, seed=seed)
    train, test, mask_paths = load_split(category)
    t0 = time.perf_counter()
    model = PaDiM(verbose=verbose).fit(train)
    t1 = time.perf_counter()
    pred = model.predict(test)
    t2 = time.perf_counter()
    pre = model.preprocessing
    masks = [pre.mask(np.asarray(Image.open(m))) if m else np.zeros(pred.maps.shape[1:], bool) for m in mask_paths]
    labels = [m is not None for m in mask_paths]
    write_overlays(root / "overlays" / texture, model, test, pred.maps, masks, pred.scores)
    return DemoResult(texture, len(train), labels.count(False), labels.count(True),
                      image_auroc(labels, pred.scores), pixel_auroc(masks, pred.maps), t1 - t0, t2 - t1)


def write_overlays(folder: Path, model: PaDiM, paths: list[Path], maps: np.ndarray, masks: list[np.ndarray],
                   scores: np.ndarray) -> None:
    """Save 'image | heat map with ground-truth contour' PNGs, named by score rank, on one colour scale."""
    vmin, vmax = colour_scale(maps, basis="range")
    for rank, i in enumerate(np.argsort(-scores)):
        rgb = (model.preprocessing.resized(read_image(paths[i])).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        panel = heatmap_overlay(rgb, maps[i], vmin=vmin, vmax=vmax, mask=masks[i])
        save_png(folder / f"{rank:03d}_{paths[i].parent.name}_{paths[i].stem}.png", side_by_side(rgb, panel))


def run_demo(out_dir: str | Path = "padim-demo", textures: tuple[str, ...] = TEXTURES,
             progress: bool = False) -> Iterator[DemoResult]:
    """Run the demo texture by texture, yielding each result; results.json is written at the end."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for texture in textures:
        results.append(run_texture(root, texture, progress))
        yield results[-1]
    atomic_write(root / "results.json", lambda tmp: Path(tmp).write_text(json.dumps([asdict(r) for r in results], indent=2)))


HEADER = f"{'texture':<8} {'train':>5} {'good':>4} {'defect':>6} {'image AUROC':>11} {'pixel AUROC':>11} {'fit s':>6} {'predict s':>9}"


def format_row(r: DemoResult) -> str:
    """One line of the demo table."""
    return (f"{r.texture:<8} {r.n_train:>5} {r.n_test_good:>4} {r.n_test_defect:>6} {r.image_auroc:>11.3f} "
            f"{r.pixel_auroc:>11.3f} {r.fit_seconds:>6.1f} {r.predict_seconds:>9.1f}")
