"""One self-contained HTML inspection report: every image with its heat map and outlines, sorted by score.

The file has no external references (images are inline base64 PNGs, CSS is inline, no JavaScript), so it
can be mailed or archived as it is. When ground truth is known it also holds the metric table (image AUROC,
pixel AUROC, AU-PRO, computed by `padim.evaluation.metrics`) and the ROC and PRO curves (matplotlib, Agg canvas).
The markup is package data: templates/report.html (the document), report.css and parts.html (its fragments).
"""

from __future__ import annotations

import datetime as _dt
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from padim.images import DEFAULT_MAX_PIXELS
from padim.errors import InputError
from padim.reporting.overlay import MASK_COLOUR, THRESHOLD_COLOUR, colour_scale
from padim.reporting.report_metrics import ReportMetrics, compute_metrics, curves_png, ground_truth
from padim.reporting.report_pictures import (THUMBNAIL, colour_name, jet_gradient, load_image, png_data_uri,
                                             row_pictures)
from padim.reporting.report_text import (METRIC_TEXT, NOT_CALIBRATED, calibration_caveat, describe_thresholds,
                                         display_names, given_note, model_summary)
from padim.utils.templates import fill, read_template, render, template_parts

if TYPE_CHECKING:
    from padim.evaluation.datasets import Sample
    from padim.model import PaDiM, Prediction

TEMPLATES = "padim.reporting"
DEFAULT_TITLE = "PaDiM inspection report"
__all__ = ["DEFAULT_TITLE", "METRIC_TEXT", "NOT_CALIBRATED", "THUMBNAIL", "ReportMetrics", "calibration_caveat",
           "collect_inputs", "compute_metrics", "describe_thresholds", "display_names", "given_note", "ground_truth",
           "is_mvtec_category", "model_summary", "png_data_uri", "render_report", "report_from_files",
           "row_pictures", "write_report"]


def _part(part: str, /, **values: object) -> str:
    """One fragment of templates/parts.html, filled in (values already escaped for HTML)."""
    return fill(template_parts(TEMPLATES, "parts.html")[part], **values)


def _fmt(value: float | None, digits: int = 4) -> str:
    """A number for the page, a dash for none."""
    return _part("no_value") if value is None else f"{value:.{digits}g}"


def _summary(prediction: "Prediction", labels: np.ndarray | None) -> str:
    """The one-line summary under the title: counts, verdicts, ground truth."""
    n = len(prediction.scores)
    summary = f"{n} image{'s' if n != 1 else ''}"
    if prediction.decisions is not None:
        n_defect = int(np.sum(prediction.decisions))
        summary += f", {n_defect} flagged DEFECT, {n - n_defect} OK"
    if labels is not None:
        summary += f"; ground truth: {int(labels.sum())} defective, {int((~labels).sum())} good"
    return summary


def _model_html(model: "PaDiM | None", prediction: "Prediction", note: str) -> str:
    """The model summary, the thresholds and how they were chosen."""
    esc = html.escape
    rows = [_part("kv_row_warn" if "RANDOM" in value else "kv_row", label=esc(label), value=esc(value))
            for label, value in (model_summary(model) if model is not None else [])]
    it, pt = prediction.image_threshold, prediction.pixel_threshold
    image_text = _part("image_threshold", value=_fmt(it)) if it is not None else "none: no verdicts"
    pixel_text = _part("pixel_threshold", value=_fmt(pt)) if pt is not None else "none: no predicted defect outlines"
    rows.append(_part("kv_row", label="image threshold", value=image_text))
    rows.append(_part("kv_row", label="pixel threshold", value=pixel_text))
    rows.append(_part("note_row_warn" if note == NOT_CALIBRATED else "note_row", note=esc(note)))
    caveat = calibration_caveat(model, prediction)
    if caveat:
        rows.append(_part("kv_row_warn", label="caution", value=esc(caveat)))
    return _part("model_section", rows="\n".join(rows))


def _metrics_html(metrics: ReportMetrics) -> str:
    """The metric table (values exactly as padim.evaluation.metrics gives them, in data-value) and the curves."""
    rows = [_part("metric_row", label=label, key=key, exact=repr(float(metrics.values[key])),
                  shown=f"{float(metrics.values[key]):.4f}", what=html.escape(what))
            for key, (label, what) in METRIC_TEXT.items() if key in metrics.values]
    c = metrics.counts
    if c and c["tp"] + c["fn"]:
        rows.append(_part("count_row", label="defects caught", count=c["tp"], total=c["tp"] + c["fn"],
                          what="defective images called DEFECT at the image threshold (recall)"))
    if c and c["fp"] + c["tn"]:
        rows.append(_part("count_row", label="false alarms", count=c["fp"], total=c["fp"] + c["tn"],
                          what="good images called DEFECT at the image threshold"))
    notes = "\n".join(_part("note", text=html.escape(text)) for text in metrics.notes)
    curves = curves_png(metrics)
    return _part("metrics_section", rows="\n".join(rows), notes=notes,
                 curves=_part("curves", src=curves) if curves else "")


def _legend_html(scale: tuple[float, float], prediction: "Prediction", has_masks: bool) -> str:
    """Colour scale of the heat maps (with the pixel threshold) and the outline colours."""
    (vmin, vmax), pt = scale, prediction.pixel_threshold
    tick = ""
    if pt is not None and vmin <= pt <= vmax and vmax > vmin:
        tick = _part("tick", left=f"{100 * (pt - vmin) / (vmax - vmin):.1f}")
    legend = [_part("scale_legend", low=_fmt(vmin), high=_fmt(vmax), gradient=jet_gradient(), tick=tick,
                    tick_note="; black tick: pixel threshold" if tick else "")]
    if pt is not None:
        where = " on images called DEFECT" if prediction.decisions is not None else ""
        legend.append(_part("swatch", colour=THRESHOLD_COLOUR,
                            text=f"predicted defect (pixels above the pixel threshold{where})"))
    if has_masks:
        legend.append(_part("swatch", colour=MASK_COLOUR, text="ground truth"))
    return "".join(legend)


def _outline_header(prediction: "Prediction", has_masks: bool) -> str:
    """The outlines column's heading, or nothing when there is nothing to outline."""
    columns = ([f"predicted defect ({colour_name(THRESHOLD_COLOUR)})"] if prediction.pixel_threshold is not None
               else []) + ([f"ground truth ({colour_name(MASK_COLOUR)})"] if has_masks else [])
    return _part("outline_header", columns=" / ".join(columns)) if columns else ""


@dataclass(frozen=True)
class _RowContext:
    """What every image row of one report shares."""

    prediction: "Prediction"
    scale: tuple[float, float]
    outlines: bool  # draw the outlines column
    thumbnail: int


@dataclass(frozen=True)
class _ReportImage:
    """One image of the report: its place in the prediction and in the page, its picture and ground truth."""

    index: int
    rank: int
    name: str
    shown: str
    pixels: np.ndarray
    gt_mask: np.ndarray | None
    label: bool | None


def _predicted_region(context: _RowContext, i: int) -> np.ndarray | None:
    """The region to outline in red: the predicted mask, none for an image called OK."""
    prediction, pt = context.prediction, context.prediction.pixel_threshold
    if prediction.decisions is not None and not prediction.decisions[i]:
        return None
    if prediction.masks is not None:
        return prediction.masks[i]
    return np.asarray(prediction.maps[i]) > pt if pt is not None else None


def _info_html(context: _RowContext, image: _ReportImage) -> str:
    """The row's first cell: rank, name, score, verdict, reason and ground truth."""
    prediction, i, esc = context.prediction, image.index, html.escape
    normalised = verdict = reason = truth = ""
    if prediction.normalized_scores is not None:
        normalised = _part("normalised", value=f"{float(prediction.normalized_scores[i]):.2f}")
    if prediction.decisions is not None:
        bad = bool(prediction.decisions[i])
        verdict = _part("verdict", kind="defect" if bad else "ok", text="DEFECT" if bad else "OK")
    else:
        verdict = _part("verdict", kind="none", text="no verdict")
    if prediction.reasons is not None and prediction.reasons[i]:
        reason = _part("reason", reason=esc(prediction.reasons[i]))
    if image.label is not None:
        wrong = ""
        if prediction.decisions is not None and bool(prediction.decisions[i]) != image.label:
            wrong = _part("wrong", text="missed defect" if image.label else "false alarm")
        truth = _part("truth", truth="defective" if image.label else "good", wrong=wrong)
    return _part("row_info", rank=image.rank, name=esc(image.name), shown=esc(image.shown),
                 score=f"{float(prediction.scores[i]):.4g}", normalised=normalised, verdict=verdict, reason=reason,
                 truth=truth)


def _row_html(context: _RowContext, image: _ReportImage) -> str:
    """One image: name, score, verdict, ground truth and its three pictures."""
    prediction, i = context.prediction, image.index
    amap = prediction.maps[i]
    if image.pixels.shape[:2] != np.shape(amap):
        raise InputError(f"{image.name}: image {image.pixels.shape[:2]} and anomaly map {np.shape(amap)} "
                         "differ in size")
    predicted = _predicted_region(context, i)
    small, heat, outlined = row_pictures(image.pixels, amap, scale=context.scale, predicted=predicted,
                                         gt_mask=image.gt_mask, largest=context.thumbnail)
    cells = [_part("picture_cell", alt="original", src=png_data_uri(small)),
             _part("picture_cell", alt="heat map", src=png_data_uri(heat))]
    if context.outlines:
        picture = _part("outline_picture", src=png_data_uri(outlined)) if outlined is not None else ""
        called_ok = prediction.decisions is not None and not prediction.decisions[i]
        caption = _part("ok_caption") if called_ok and prediction.pixel_threshold is not None else ""
        cells.append(_part("outline_cell", picture=picture, caption=caption))
    return _part("row", exact_score=repr(float(prediction.scores[i])), info=_info_html(context, image),
                 cells="".join(cells))


def _check_sizes(names: Sequence[str], images: Sequence[Any], prediction: "Prediction",
                 gt_masks: Sequence[np.ndarray | None] | None) -> None:
    """One name, image and (optional) mask per prediction, each mask at its map's size."""
    n = len(prediction.scores)
    if len(names) != n or len(images) != n:
        raise InputError(f"{len(names)} names and {len(images)} images for {n} predictions")
    for i, amap in enumerate(prediction.maps):
        if gt_masks is not None and gt_masks[i] is not None and np.shape(gt_masks[i]) != np.shape(amap):
            raise InputError(f"{names[i]}: ground-truth mask {np.shape(gt_masks[i])} does not match its "
                             f"anomaly map {np.shape(amap)}")


def _images_html(names: Sequence[str], images: Sequence[Any], prediction: "Prediction",
                 gt_masks: Sequence[np.ndarray | None] | None, labels: np.ndarray | None, *, thumbnail: int) -> str:
    """The legend and one row per image, highest score first (images loaded one at a time)."""
    context = _RowContext(prediction, colour_scale(prediction.maps, basis="median"),
                          prediction.pixel_threshold is not None or gt_masks is not None, thumbnail)
    shown = display_names([str(x) for x in names])
    order = np.argsort(-np.asarray(prediction.scores, dtype=np.float64), kind="stable")
    html_rows = [_row_html(context, _ReportImage(
        i, rank, str(names[i]), shown[i], load_image(images[i]), gt_masks[i] if gt_masks is not None else None,
        None if labels is None else bool(labels[i]))) for rank, i in enumerate(order, 1)]
    return _part("images_section", legend=_legend_html(context.scale, prediction, gt_masks is not None),
                 outline_header=_outline_header(prediction, gt_masks is not None), rows="\n".join(html_rows))


def render_report(
    names: Sequence[str],
    images: Sequence[Any],
    prediction: "Prediction",
    gt_masks: Sequence[np.ndarray | None] | None = None,
    labels: Any = None,
    *,
    title: str = DEFAULT_TITLE,
    model: "PaDiM | None" = None,
    threshold_note: str | None = None,
    thumbnail: int = THUMBNAIL,
) -> str:
    """The report as an HTML string (see write_report)."""
    from padim._version import __version__

    _check_sizes(names, images, prediction, gt_masks)
    labels, full_masks = ground_truth(labels, gt_masks, len(prediction.scores))
    sections = [_model_html(model, prediction, threshold_note or describe_thresholds(model, prediction))]
    if labels is not None:
        sections.append(_metrics_html(compute_metrics(prediction, labels, full_masks)))
    sections.append(_images_html(names, images, prediction, gt_masks, labels, thumbnail=thumbnail))
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return render(TEMPLATES, "report.html", title=html.escape(title), css=read_template(TEMPLATES, "report.css"),
                  summary=html.escape(_summary(prediction, labels)), stamp=html.escape(stamp),
                  version=html.escape(__version__), sections="\n".join(sections))


def write_report(path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
    """Write one self-contained HTML report (atomically); arguments as render_report.

    names, images and the prediction's scores/maps are in the same order; each image is an RGB uint8
    array at its map's size (or a path, read at its own size), loaded one at a time. gt_masks: per image
    a boolean mask at the map's size or None (unknown); labels: per image True = defective (default:
    the mask has a defect pixel, when every mask is known). model adds its summary and, with
    threshold_note unset, the sentence saying how its calibration chose the thresholds.
    Thumbnails are at most `thumbnail` pixels on their longest side.
    """
    from padim.reporting.results import write_text

    write_text(path, render_report(*args, **kwargs))


# --------------------------------------------------------------------------------------------------- from files


class _Preprocessed(Sequence):
    """Images read lazily and resized/cropped like the model's input (for display, not normalised)."""

    def __init__(self, paths: Sequence[Path], preprocess: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.paths, self.preprocess, self.max_pixels = list(paths), preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        from padim.images import read_image

        rgb = self.preprocess.resized(read_image(self.paths[i], self.max_pixels))
        return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def is_mvtec_category(folder: Path) -> bool:
    """True for a folder in MVTec AD's category layout (test/ and ground_truth/)."""
    return (folder / "test").is_dir() and (folder / "ground_truth").is_dir()


def _mask_sample(image: Path, mask_root: Path) -> "Sample":
    """A plain image's ground truth from `mask_root/<stem>_mask.png` (no mask file, or an empty one: good)."""
    from padim.evaluation.datasets import GOOD, MASK_SUFFIX, MaskRef, Sample
    from padim.images import image_shape

    mask = mask_root / f"{image.stem}{MASK_SUFFIX}"
    if mask.is_file():
        sample = Sample(image, 1, "defect", MaskRef(mask))
        if sample.load_mask(image_shape(image)).any():
            return sample
    return Sample(image, 0, GOOD, None)


def collect_inputs(inputs: Sequence[str],
                   masks_dir: str | os.PathLike | None = None) -> tuple[list[Path], list["Sample | None"]]:
    """Image paths and, per image, a Sample with its ground truth (None when unknown).

    An MVTec-layout category folder gives its test images with labels and masks; other folders and
    files give their images, with masks from `masks_dir/<stem>_mask.png` when masks_dir is set (no mask
    file, or an empty one: a good image).
    """
    from padim.evaluation.datasets import mvtec_category
    from padim.reporting.results import expand_inputs

    mask_root = Path(masks_dir) if masks_dir is not None else None
    if mask_root is not None and not mask_root.is_dir():
        raise InputError(f"{mask_root}: no such folder (--masks-dir)")
    paths: list[Path] = []
    samples: list[Sample | None] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir() and is_mvtec_category(path):
            split = mvtec_category(path.resolve().parent, path.resolve().name)
            paths += [s.image for s in split.test]
            samples += split.test
            continue
        found = expand_inputs([path])
        paths += found
        samples += [None if mask_root is None else _mask_sample(image, mask_root) for image in found]
    return paths, samples


def report_from_files(
    path: str | os.PathLike,
    model: "PaDiM",
    inputs: Sequence[str],
    *,
    masks_dir: str | os.PathLike | None = None,
    title: str = DEFAULT_TITLE,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
) -> "Prediction":
    """Predict on the inputs (see collect_inputs) and write the report, on the model's input grid."""
    from padim.images import image_shape

    paths, samples = collect_inputs(inputs, masks_dir)
    pre = model.preprocessing
    prediction = model.predict(paths, image_threshold=image_threshold, pixel_threshold=pixel_threshold)
    masks = [None if s is None else pre.mask(s.load_mask(image_shape(s.image))) for s in samples]
    known = [s is not None for s in samples]
    labels = np.array([s.label for s in samples], dtype=bool) if all(known) else None
    note = given_note(model, image_threshold, pixel_threshold)
    images = _Preprocessed(paths, pre, getattr(model, "max_pixels", DEFAULT_MAX_PIXELS))
    write_report(path, [str(p) for p in paths], images, prediction, masks if any(known) else None, labels,
                 title=title, model=model, threshold_note=note)
    return prediction
