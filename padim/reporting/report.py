"""One self-contained HTML inspection report: every image with its heat map and outlines, sorted by score.

The file has no external references (images are inline base64 PNGs, CSS is inline, no JavaScript), so it
can be mailed or archived as it is. When ground truth is known it also holds the metric table (image AUROC,
pixel AUROC, AU-PRO, computed by `padim.evaluation.metrics`) and the ROC and PRO curves (matplotlib, Agg canvas).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from padim import paper
from padim.utils.atomic import atomic_write
from padim.images import DEFAULT_MAX_PIXELS
from padim.errors import PadimError
from padim.reporting.overlay import MASK_COLOUR, THRESHOLD_COLOUR, as_rgb, contour, heatmap_overlay

if TYPE_CHECKING:
    from padim.evaluation.datasets import Sample
    from padim.model import PaDiM, Prediction

THUMBNAIL = 256  # largest side of the pictures embedded in the report, in pixels
NOT_CALIBRATED = ("not calibrated: no verdicts (set thresholds with `padim calibrate MODEL GOOD_DIR`, "
                  "or fit with --holdout 0.1)")


# --------------------------------------------------------------------------------------------------- metrics


@dataclass
class ReportMetrics:
    """What the ground truth allows: metric values (padim.evaluation.metrics) and the curves behind them."""

    values: dict[str, float] = field(default_factory=dict)  # image_auroc, pixel_auroc, au_pro
    image_roc: tuple[np.ndarray, np.ndarray] | None = None  # (FPR, TPR)
    pixel_roc: tuple[np.ndarray, np.ndarray] | None = None
    pro: tuple[np.ndarray, np.ndarray] | None = None  # (FPR, PRO)
    image_point: tuple[float, float] | None = None  # (FPR, TPR) at the image threshold
    pixel_point: tuple[float, float] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # confusion at the image threshold
    notes: list[str] = field(default_factory=list)  # why a metric is missing


def ground_truth(labels: Any, gt_masks: Sequence[np.ndarray | None] | None,
                 n: int) -> tuple[np.ndarray | None, list | None]:
    """Image labels (bool, or None when unknown) and full masks for the pixel metrics (or None).

    Labels default to "mask has a defect pixel" when every mask is known; a good image's missing mask
    counts as all defect-free; a defective image without a mask leaves the pixel metrics out.
    """
    if labels is not None:
        labels = np.asarray(labels).astype(bool).ravel()
        if len(labels) != n:
            raise PadimError(f"{len(labels)} labels for {n} images")
    if gt_masks is None:
        return labels, None
    if len(gt_masks) != n:
        raise PadimError(f"{len(gt_masks)} ground-truth masks for {n} images")
    if labels is None:
        if any(m is None for m in gt_masks):
            return None, None
        labels = np.array([bool(np.asarray(m).any()) for m in gt_masks])
    if any(m is None and bad for m, bad in zip(gt_masks, labels)):
        return labels, None
    return labels, gt_masks


def compute_metrics(prediction: "Prediction", labels: np.ndarray | None, masks: list | None) -> ReportMetrics:
    """Image AUROC, pixel AUROC and AU-PRO with their curves, as far as the ground truth allows."""
    from sklearn.metrics import roc_curve

    from padim.evaluation.metrics import au_pro, image_auroc, pixel_auroc, pro_curve

    out = ReportMetrics()
    if labels is None:
        return out
    scores = np.asarray(prediction.scores, dtype=np.float64)
    if 0 < labels.sum() < len(labels):
        out.values["image_auroc"] = image_auroc(labels, scores)
        fpr, tpr, _ = roc_curve(labels, scores)
        out.image_roc = (fpr, tpr)
        if prediction.image_threshold is not None:
            flagged = scores > prediction.image_threshold
            out.image_point = (float(flagged[~labels].mean()), float(flagged[labels].mean()))
    else:
        out.notes.append("image AUROC needs both good and defective images")
    if prediction.decisions is not None:
        d = np.asarray(prediction.decisions, dtype=bool)
        out.counts = {"tp": int((d & labels).sum()), "fn": int((~d & labels).sum()),
                      "fp": int((d & ~labels).sum()), "tn": int((~d & ~labels).sum())}
    if masks is None:
        if labels.any():
            out.notes.append("pixel AUROC and AU-PRO need a ground-truth mask for every defective image")
        return out
    full = [np.zeros(np.shape(m), dtype=bool) if g is None else np.asarray(g) > 0
            for g, m in zip(masks, prediction.maps)]
    truth = np.concatenate([g.ravel() for g in full])
    if truth.any() and not truth.all():
        out.values["pixel_auroc"] = pixel_auroc(full, prediction.maps)
        out.values["au_pro"] = float(au_pro(full, prediction.maps))
        values = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in prediction.maps])
        fpr, tpr, _ = roc_curve(truth, values)
        out.pixel_roc = (fpr, tpr)
        out.pro = pro_curve(full, prediction.maps)
        if prediction.pixel_threshold is not None:
            flagged = values > prediction.pixel_threshold
            out.pixel_point = (float(flagged[~truth].mean()), float(flagged[truth].mean()))
    else:
        out.notes.append("pixel AUROC and AU-PRO need both defect and defect-free pixels")
    return out


# --------------------------------------------------------------------------------------------------- pictures


def png_data_uri(rgb: np.ndarray) -> str:
    """An RGB uint8 image as a data: URI holding a PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(as_rgb(rgb)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb_size(shape: tuple[int, ...], largest: int) -> tuple[int, int]:
    """(width, height) with the largest side at most `largest`, aspect kept."""
    h, w = int(shape[0]), int(shape[1])
    scale = min(1.0, largest / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _shrink(array: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
    """Resize to (width, height): 'image' (Lanczos), 'map' (bilinear, float) or 'mask' (nearest, bool)."""
    from PIL import Image

    if (array.shape[1], array.shape[0]) == size:
        return array
    if kind == "image":
        return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS))
    if kind == "map":
        return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0


def _load_image(source: Any) -> np.ndarray:
    """An image given as an RGB uint8 array, or a path read at its own size."""
    if isinstance(source, (str, os.PathLike)):
        from padim.images import read_image

        return (read_image(source).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return as_rgb(np.asarray(source))


def row_pictures(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, predicted: np.ndarray | None,
                 gt_mask: np.ndarray | None,
                 largest: int = THUMBNAIL) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Thumbnails of one image: original, heat map overlay, outlines (red: predicted defect, green: ground truth)."""
    size = _thumb_size(image.shape, largest)
    small = _shrink(image, size, "image")
    heat = heatmap_overlay(small, _shrink(np.asarray(amap, dtype=np.float32), size, "map"), vmin=vmin, vmax=vmax)
    if predicted is None and gt_mask is None:
        return small, heat, None
    outlined = small.copy()
    if gt_mask is not None:
        outlined[contour(_shrink(np.asarray(gt_mask) > 0, size, "mask"))] = MASK_COLOUR
    if predicted is not None:
        outlined[contour(_shrink(np.asarray(predicted) > 0, size, "mask"))] = THRESHOLD_COLOUR
    return small, heat, outlined


def _curves_png(m: ReportMetrics) -> str | None:
    """ROC curves (image, pixel) and the PRO curve as one inline PNG (matplotlib, Agg canvas), or None."""
    if m.image_roc is None and m.pixel_roc is None:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_axes = 2 if m.pro is not None else 1
    fig = Figure(figsize=(5.2 * n_axes, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, n_axes, 1)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls="--", label="chance")
    if m.image_roc is not None:
        ax.plot(*m.image_roc, color="#1f5fbf", lw=2, label=f"image level (AUROC {m.values['image_auroc']:.3f})")
        if m.image_point is not None:
            ax.plot(*m.image_point, "o", color="#1f5fbf", ms=8, mfc="white", mew=2, label="image threshold")
    if m.pixel_roc is not None:
        ax.plot(*m.pixel_roc, color="#d9731a", lw=2, label=f"pixel level (AUROC {m.values['pixel_auroc']:.3f})")
        if m.pixel_point is not None:
            ax.plot(*m.pixel_point, "s", color="#d9731a", ms=7, mfc="white", mew=2, label="pixel threshold")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if m.pro is not None:
        ax = fig.add_subplot(1, n_axes, 2)
        fpr, pro = m.pro
        limit = paper.PRO_FPR_LIMIT
        ax.plot(fpr, pro, color="#2a9d4b", lw=2, label=f"PRO (AU-PRO up to FPR {limit:g}: {m.values['au_pro']:.3f})")
        keep = fpr <= limit
        ax.fill_between(fpr[keep], pro[keep], color="#2a9d4b", alpha=0.15)
        ax.axvline(limit, color="#444444", lw=1, ls="--", label=f"FPR {limit:g} (integration limit)")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate (defect-free pixels)",
               ylabel="per-region overlap", title="PRO")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def colour_range(maps: Any, max_sample: int = 1_000_000) -> tuple[float, float]:
    """Heat-map colour scale shared by every image: the median pixel score (blue) to the highest (red).

    The median, not the minimum, so that the zero border a centre-cropped model leaves around maps at
    the original size (and bicubic ringing below it) does not squeeze the normal-to-defect range.
    """
    if len(maps) == 0:
        return 0.0, 1.0
    total = sum(int(np.size(m)) for m in maps)
    step = max(1, -(-total // max_sample))
    sample = np.concatenate([np.asarray(m, dtype=np.float32).ravel()[::step] for m in maps])
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    vmax = max(float(np.max(m, initial=-np.inf, where=np.isfinite(m))) for m in maps)  # NaN: not inspected
    return min(float(np.median(sample)), vmax), vmax


def _colour_name(rgb: tuple[int, int, int]) -> str:
    """'red' / 'green' for the outline colours."""
    return {THRESHOLD_COLOUR: "red", MASK_COLOUR: "green"}.get(rgb, f"rgb{rgb}")


def _jet_gradient() -> str:
    """A CSS linear-gradient with the heat maps' "jet" colours (low to high, left to right)."""
    import matplotlib

    cmap = matplotlib.colormaps["jet"]
    stops = []
    for t in np.linspace(0, 1, 11):
        r, g, b = (int(round(255 * c)) for c in cmap(float(t))[:3])
        stops.append(f"rgb({r},{g},{b}) {100 * t:.0f}%")
    return "linear-gradient(to right, " + ", ".join(stops) + ")"


# --------------------------------------------------------------------------------------------------- text


def describe_thresholds(model: "PaDiM | None", prediction: "Prediction") -> str:
    """How the prediction's thresholds were chosen, in one sentence."""
    if prediction.image_threshold is None and prediction.pixel_threshold is None:
        return NOT_CALIBRATED
    calibration = getattr(model, "calibration_", None)
    if calibration is not None and prediction.image_threshold == calibration.image_threshold \
            and prediction.pixel_threshold == calibration.pixel_threshold:
        return calibration.describe()
    return "given by the user (not the model's calibration)"


def calibration_caveat(model: "PaDiM | None", prediction: "Prediction") -> str | None:
    """A warning when the calibrated image threshold rests on too few good images for its target rate."""
    import math

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
    weights = {"random": "RANDOM WEIGHTS: not for real use", "package": "ImageNet, from the installed package",
               "torch-hub": "ImageNet, from the torch hub cache", "hf-cache": "ImageNet, from the Hugging Face cache",
               "file": f"file {bb['weights'].get('path')}"}.get(kind, str(kind))
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


def _fmt(value: float | None, digits: int = 4) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}g}"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  margin:24px;color:#1d2330;background:#fff}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.sub{color:#5b6475;font-size:13px;margin-bottom:16px}
table.kv{border-collapse:collapse;font-size:14px}
table.kv th{text-align:left;padding:3px 16px 3px 0;color:#5b6475;font-weight:600;vertical-align:top;white-space:nowrap}
table.kv td{padding:3px 0}
.warn{color:#b42318;font-weight:600}
table.metrics{border-collapse:collapse;font-size:14px;margin:6px 0 12px}
table.metrics th,table.metrics td{border:1px solid #d8dce3;padding:5px 12px;text-align:left}
table.metrics td.num{text-align:right;font-variant-numeric:tabular-nums;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:22px;align-items:center;font-size:13px;margin:8px 0 12px}
.bar{display:inline-block;width:180px;height:12px;vertical-align:middle;border:1px solid #888;
  position:relative;margin:0 6px}
.tick{position:absolute;top:-4px;width:2px;height:20px;background:#000}
.swatch{display:inline-block;width:18px;height:4px;vertical-align:middle;margin-right:5px}
table.rows{border-collapse:collapse}
table.rows th{font-size:13px;text-align:left;color:#5b6475;border-bottom:2px solid #d8dce3;padding:6px 8px}
table.rows td{border-bottom:1px solid #e6e9ee;padding:8px;vertical-align:top;font-size:14px}
td.info{width:250px;padding-right:20px;word-break:break-all}
.name{font-weight:600;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px}
.rank{color:#8a93a5;font-size:12px} .score{font-size:20px;font-weight:700;font-variant-numeric:tabular-nums}
.muted{color:#5b6475;font-size:12px}
.verdict{display:inline-block;padding:2px 9px;border-radius:4px;font-weight:700;font-size:13px;color:#fff;
  margin-top:4px}
.defect{background:#c62828} .ok{background:#2e7d32} .none{background:#8a93a5}
.truth{font-size:12px;margin-top:6px} .wrong{color:#b42318;font-weight:700}
img.panel{width:224px;height:auto;display:block;border:1px solid #d8dce3}
img.curves{max-width:100%;border:1px solid #e6e9ee}
"""

METRIC_TEXT = {
    "image_auroc": ("image AUROC", "ranking of defective above good images by score (1 = perfect, 0.5 = chance)"),
    "pixel_auroc": ("pixel AUROC", "ranking of defect pixels above defect-free pixels"),
    "au_pro": ("AU-PRO", f"per-region overlap, area up to FPR {paper.PRO_FPR_LIMIT:g}, normalised (MVTec AD)"),
}


def _header_html(title: str, prediction: "Prediction", labels: np.ndarray | None) -> list[str]:
    """Title and the one-line summary."""
    from padim._version import __version__

    n = len(prediction.scores)
    summary = f"{n} image{'s' if n != 1 else ''}"
    if prediction.decisions is not None:
        n_defect = int(np.sum(prediction.decisions))
        summary += f", {n_defect} flagged DEFECT, {n - n_defect} OK"
    if labels is not None:
        summary += f"; ground truth: {int(labels.sum())} defective, {int((~labels).sum())} good"
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
            f'<div class="sub">{html.escape(summary)} &middot; sorted by anomaly score, highest first &middot; '
            f"generated {html.escape(stamp)} by torch-padim {html.escape(__version__)}</div>"]


def _model_html(model: "PaDiM | None", prediction: "Prediction", note: str) -> list[str]:
    """The model summary, the thresholds and how they were chosen."""
    esc = html.escape
    out = ['<h2>Model and thresholds</h2><table class="kv">']
    for label, value in model_summary(model) if model is not None else []:
        cls = ' class="warn"' if "RANDOM" in value else ""
        out.append(f"<tr><th>{esc(label)}</th><td{cls}>{esc(value)}</td></tr>")
    it, pt = prediction.image_threshold, prediction.pixel_threshold
    image_text = (f"{_fmt(it)} &mdash; an image scoring above it is called DEFECT" if it is not None
                  else "none: no verdicts")
    pixel_text = (f"{_fmt(pt)} &mdash; pixels scoring above it are outlined in red" if pt is not None
                  else "none: no predicted defect outlines")
    out.append(f"<tr><th>image threshold</th><td>{image_text}</td></tr>")
    out.append(f"<tr><th>pixel threshold</th><td>{pixel_text}</td></tr>")
    cls = ' class="warn"' if note == NOT_CALIBRATED else ""
    out.append(f'<tr><th>how chosen</th><td{cls} id="threshold-note">{esc(note)}</td></tr>')
    caveat = calibration_caveat(model, prediction)
    if caveat:
        out.append(f'<tr><th>caution</th><td class="warn">{esc(caveat)}</td></tr>')
    return out + ["</table>"]


def _metrics_html(metrics: ReportMetrics) -> list[str]:
    """The metric table (values exactly as padim.evaluation.metrics gives them, in data-value) and the curves."""
    out = ['<h2>Metrics</h2><table class="metrics"><tr><th>metric</th><th>value</th><th>what it measures</th></tr>']
    for key, (label, what) in METRIC_TEXT.items():
        if key in metrics.values:
            v = float(metrics.values[key])
            out.append(f'<tr><td>{label}</td><td class="num" data-metric="{key}" data-value="{v!r}">{v:.4f}</td>'
                       f"<td>{what}</td></tr>")
    c = metrics.counts
    if c and c["tp"] + c["fn"]:
        out.append(f'<tr><td>defects caught</td><td class="num">{c["tp"]} / {c["tp"] + c["fn"]}</td>'
                   f"<td>defective images called DEFECT at the image threshold (recall)</td></tr>")
    if c and c["fp"] + c["tn"]:
        out.append(f'<tr><td>false alarms</td><td class="num">{c["fp"]} / {c["fp"] + c["tn"]}</td>'
                   f"<td>good images called DEFECT at the image threshold</td></tr>")
    out.append("</table>")
    out += [f'<div class="muted">{html.escape(text)}</div>' for text in metrics.notes]
    curves = _curves_png(metrics)
    if curves:
        out.append(f'<img class="curves" alt="ROC and PRO curves" src="{curves}">')
    return out


def _legend_html(vmin: float, vmax: float, prediction: "Prediction", has_masks: bool) -> list[str]:
    """Colour scale of the heat maps (with the pixel threshold) and the outline colours."""
    pt = prediction.pixel_threshold
    tick = ""
    if pt is not None and vmin <= pt <= vmax and vmax > vmin:
        tick = f'<span class="tick" style="left:{100 * (pt - vmin) / (vmax - vmin):.1f}%"></span>'
    legend = [f'<span>heat map: {_fmt(vmin)} (median pixel)<span class="bar" style="background:{_jet_gradient()}">'
              f"{tick}</span>{_fmt(vmax)} (highest) &mdash; pixel anomaly score, same scale for every image"
              + ("; black tick: pixel threshold" if tick else "") + "</span>"]
    if pt is not None:
        where = " on images called DEFECT" if prediction.decisions is not None else ""
        legend.append(f'<span><span class="swatch" style="background:rgb{THRESHOLD_COLOUR}"></span>'
                      f"predicted defect (pixels above the pixel threshold{where})</span>")
    if has_masks:
        legend.append(f'<span><span class="swatch" style="background:rgb{MASK_COLOUR}"></span>ground truth</span>')
    columns = ([f"predicted defect ({_colour_name(THRESHOLD_COLOUR)})"] if pt is not None else []) \
        + ([f"ground truth ({_colour_name(MASK_COLOUR)})"] if has_masks else [])
    return ["<h2>Images</h2>", '<div class="legend">' + "".join(legend) + "</div>",
            '<table class="rows"><tr><th>image</th><th>original</th><th>anomaly heat map</th>'
            + (f"<th>{' / '.join(columns)}</th>" if columns else "") + "</tr>"]


def _row_html(i: int, rank: int, name: str, shown: str, image: np.ndarray, prediction: "Prediction",
              gt_mask: np.ndarray | None, label: bool | None, scale: tuple[float, float], outlines: bool,
              thumbnail: int) -> str:
    """One image: name, score, verdict, ground truth and its three pictures."""
    esc, maps, pt = html.escape, prediction.maps, prediction.pixel_threshold
    if image.shape[:2] != np.shape(maps[i]):
        raise PadimError(f"{name}: image {image.shape[:2]} and anomaly map {np.shape(maps[i])} differ in size")
    called_ok = prediction.decisions is not None and not prediction.decisions[i]
    predicted = None  # an image called OK has no defect region to outline
    if not called_ok:
        predicted = prediction.masks[i] if prediction.masks is not None else (
            np.asarray(maps[i]) > pt if pt is not None else None)
    small, heat, outlined = row_pictures(image, maps[i], *scale, predicted, gt_mask, thumbnail)
    score = float(prediction.scores[i])
    info = [f'<div class="rank">#{rank}</div><div class="name" title="{esc(name)}">{esc(shown)}</div>',
            f'<div class="score">{score:.4g}</div><div class="muted">anomaly score</div>']
    if prediction.normalized_scores is not None:
        info.append(f'<div class="muted">normalised {float(prediction.normalized_scores[i]):.2f} '
                    f"(threshold at 0.50)</div>")
    if prediction.decisions is not None:
        bad = bool(prediction.decisions[i])
        info.append(f'<span class="verdict {"defect" if bad else "ok"}">{"DEFECT" if bad else "OK"}</span>')
    else:
        info.append('<span class="verdict none">no verdict</span>')
    if prediction.reasons is not None and prediction.reasons[i]:
        info.append(f'<div class="reason muted">{esc(prediction.reasons[i])}</div>')
    if label is not None:
        wrong = ""
        if prediction.decisions is not None and bool(prediction.decisions[i]) != label:
            wrong = f' &middot; <span class="wrong">{"missed defect" if label else "false alarm"}</span>'
        info.append(f'<div class="truth">ground truth: {"defective" if label else "good"}{wrong}</div>')
    cells = [f'<td><img class="panel" alt="original" src="{png_data_uri(small)}"></td>',
             f'<td><img class="panel" alt="heat map" src="{png_data_uri(heat)}"></td>']
    if outlines:
        picture = f'<img class="panel" alt="outlines" src="{png_data_uri(outlined)}">' if outlined is not None else ""
        caption = '<div class="muted">called OK: no defect outlined</div>' if called_ok and pt is not None else ""
        cells.append(f"<td>{picture}{caption}</td>")
    return f'<tr class="row" data-score="{score!r}"><td class="info">{"".join(info)}</td>{"".join(cells)}</tr>'


def render_report(
    names: Sequence[str],
    images: Sequence[Any],
    prediction: "Prediction",
    gt_masks: Sequence[np.ndarray | None] | None = None,
    labels: Any = None,
    *,
    title: str = "PaDiM inspection report",
    model: "PaDiM | None" = None,
    threshold_note: str | None = None,
    thumbnail: int = THUMBNAIL,
) -> str:
    """The report as an HTML string (see write_report)."""
    n = len(prediction.scores)
    if len(names) != n or len(images) != n:
        raise PadimError(f"{len(names)} names and {len(images)} images for {n} predictions")
    maps = prediction.maps
    for i in range(n):
        if gt_masks is not None and gt_masks[i] is not None and np.shape(gt_masks[i]) != np.shape(maps[i]):
            raise PadimError(f"{names[i]}: ground-truth mask {np.shape(gt_masks[i])} does not match its "
                             f"anomaly map {np.shape(maps[i])}")
    labels, full_masks = ground_truth(labels, gt_masks, n)
    out = _header_html(title, prediction, labels)
    out += _model_html(model, prediction, threshold_note or describe_thresholds(model, prediction))
    if labels is not None:
        out += _metrics_html(compute_metrics(prediction, labels, full_masks))
    scale = colour_range(maps)
    out += _legend_html(*scale, prediction, gt_masks is not None)
    outlines = prediction.pixel_threshold is not None or gt_masks is not None
    shown = display_names([str(x) for x in names])
    order = np.argsort(-np.asarray(prediction.scores, dtype=np.float64), kind="stable")
    for rank, i in enumerate(order, 1):
        out.append(_row_html(
            i, rank, str(names[i]), shown[i], _load_image(images[i]), prediction,
            gt_masks[i] if gt_masks is not None else None, None if labels is None else bool(labels[i]),
            scale, outlines, thumbnail))
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"


def write_report(path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
    """Write one self-contained HTML report (atomically); arguments as render_report.

    names, images and the prediction's scores/maps are in the same order; each image is an RGB uint8
    array at its map's size (or a path, read at its own size), loaded one at a time. gt_masks: per image
    a boolean mask at the map's size or None (unknown); labels: per image True = defective (default:
    the mask has a defect pixel, when every mask is known). model adds its summary and, with
    threshold_note unset, the sentence saying how its calibration chose the thresholds.
    Thumbnails are at most `thumbnail` pixels on their longest side.
    """
    text = render_report(*args, **kwargs)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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


def collect_inputs(inputs: Sequence[str],
                   masks_dir: str | os.PathLike | None = None) -> tuple[list[Path], list["Sample | None"]]:
    """Image paths and, per image, a Sample with its ground truth (None when unknown).

    An MVTec-layout category folder gives its test images with labels and masks; other folders and
    files give their images, with masks from `masks_dir/<stem>_mask.png` when masks_dir is set (no mask
    file, or an empty one: a good image).
    """
    from padim.images import list_images
    from padim.evaluation.datasets import GOOD, MASK_SUFFIX, MaskRef, Sample, mvtec_category
    from padim.images import image_shape

    mask_root = Path(masks_dir) if masks_dir is not None else None
    if mask_root is not None and not mask_root.is_dir():
        raise PadimError(f"{mask_root}: no such folder (--masks-dir)")
    paths: list[Path] = []
    samples: list[Sample | None] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir() and is_mvtec_category(path):
            split = mvtec_category(path.resolve().parent, path.resolve().name)
            paths += [s.image for s in split.test]
            samples += split.test
            continue
        if path.is_dir():
            found = list_images(path)
        elif path.exists():
            found = [path]
        else:
            raise PadimError(f"{path}: no such file or folder")
        for image in found:
            paths.append(image)
            if mask_root is None:
                samples.append(None)
                continue
            mask = mask_root / f"{image.stem}{MASK_SUFFIX}"
            if not mask.is_file():
                samples.append(Sample(image, 0, GOOD, None))
                continue
            sample = Sample(image, 1, "defect", MaskRef(mask))
            has_defect = bool(sample.load_mask(image_shape(image)).any())
            samples.append(sample if has_defect else Sample(image, 0, GOOD, None))
    return paths, samples


def report_from_files(
    path: str | os.PathLike,
    model: "PaDiM",
    inputs: Sequence[str],
    masks_dir: str | os.PathLike | None = None,
    title: str = "PaDiM inspection report",
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
    write_report(path, [str(p) for p in paths], _Preprocessed(paths, pre, getattr(model, "max_pixels", DEFAULT_MAX_PIXELS)), prediction,
                 masks if any(known) else None, labels, title=title, model=model, threshold_note=note)
    return prediction
