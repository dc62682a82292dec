"""The report's sentences: how thresholds were chosen, cautions about them, the model's summary, short names."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from padim import paper

if TYPE_CHECKING:
    from padim.model import PaDiM, Prediction

NOT_CALIBRATED = ("not calibrated: no verdicts (set thresholds with `padim calibrate MODEL GOOD_DIR`, "
                  "or fit with --holdout 0.1)")
GIVEN = "given by the user (not the model's calibration)"
WEIGHT_SOURCES = {"random": "RANDOM WEIGHTS: not for real use", "package": "ImageNet, from the installed package",
                  "torch-hub": "ImageNet, from the torch hub cache",
                  "hf-cache": "ImageNet, from the Hugging Face cache"}
METRIC_TEXT = {
    "image_auroc": ("image AUROC", "ranking of defective above good images by score (1 = perfect, 0.5 = chance)"),
    "pixel_auroc": ("pixel AUROC", "ranking of defect pixels above defect-free pixels"),
    "au_pro": ("AU-PRO", f"per-region overlap, area up to FPR {paper.PRO_FPR_LIMIT:g}, normalised (MVTec AD)"),
}


def describe_thresholds(model: "PaDiM | None", prediction: "Prediction") -> str:
    """How the prediction's thresholds were chosen, in one sentence."""
    if prediction.image_threshold is None and prediction.pixel_threshold is None:
        return NOT_CALIBRATED
    calibration = getattr(model, "calibration_", None)
    if calibration is not None and prediction.image_threshold == calibration.image_threshold \
            and prediction.pixel_threshold == calibration.pixel_threshold:
        return calibration.describe()
    return GIVEN


def calibration_caveat(model: "PaDiM | None", prediction: "Prediction") -> str | None:
    """A warning when the calibrated image threshold rests on too few good images for its target rate."""
    calibration = getattr(model, "calibration_", None)
    if calibration is None or prediction.image_threshold != calibration.image_threshold:
        return None
    n, needed = len(calibration.image_scores), math.ceil(1 / calibration.fpr)
    if n >= needed:
        return None
    return (f"only {n} good calibration images: the image threshold is their highest score; a false-positive "
            f"rate of {calibration.fpr:.2%} needs at least {needed} good images")


def given_note(model: "PaDiM | None", image_threshold: float | None, pixel_threshold: float | None) -> str | None:
    """The threshold sentence when thresholds were given by hand (None when both come from the model)."""
    given = [k for k, v in (("image", image_threshold), ("pixel", pixel_threshold)) if v is not None]
    if not given:
        return None
    note = f"{' and '.join(given)} threshold{'s' if len(given) > 1 else ''} given on the command line"
    calibration = getattr(model, "calibration_", None)
    if len(given) == 1 and calibration is not None:
        other = "pixel" if given == ["image"] else "image"
        note += f"; {other} threshold from the model's calibration ({calibration.describe()})"
    return note


def model_summary(model: "PaDiM") -> list[tuple[str, str]]:
    """(label, value) lines describing a fitted model."""
    meta = model.metadata()
    bb, pre = meta["backbone"], meta["preprocessing"]
    kind = bb["weights"]["kind"]
    weights = f"file {bb['weights'].get('path')}" if kind == "file" else WEIGHT_SOURCES.get(kind, str(kind))
    crop = pre["crop_size"]
    return [
        ("backbone", f"{bb['name']}, taps {', '.join(bb['layers'])}; weights: {weights}"),
        ("features", f"{meta['n_features']} of {meta['n_features_total']} channels "
                     f"({'random selection' if meta['reduction'] == 'random' else 'PCA'}, seed {meta['seed']})"),
        ("training images", str(meta["n_samples_seen"])),
        ("preprocessing", f"resize {'x'.join(map(str, pre['image_size']))}"
                          + (f", centre crop {'x'.join(map(str, crop))}" if crop else ", no crop")
                          + f"; Gaussian sigma {meta['sigma']:g}"),
    ]


def display_names(names: Sequence[str]) -> list[str]:
    """Names without the folder they all share (full paths are kept as tooltips)."""
    if len(names) < 2:
        return [Path(n).name or str(n) for n in names]
    try:
        common = os.path.commonpath([os.path.dirname(os.path.abspath(n)) for n in names])
        return [os.path.relpath(os.path.abspath(n), common) for n in names]
    except ValueError:  # different drives, or names that are not paths
        return [str(n) for n in names]
