"""What the report shows when ground truth is known: metric values (padim.evaluation.metrics) and their curves."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from padim import paper
from padim.errors import InputError

if TYPE_CHECKING:
    from padim.model import Prediction


@dataclass
class ReportMetrics:
    """What the ground truth allows: metric values (padim.evaluation.metrics) and the curves behind them.

    Attributes
    ----------
    values : dict
        image_auroc, pixel_auroc and au_pro, as far as the ground truth allows.
    image_roc, pixel_roc : (FPR, TPR) arrays or None
        The ROC curves.
    pro : (FPR, PRO) arrays or None
        The per-region overlap curve.
    image_point, pixel_point : (FPR, TPR) or None
        Where the image and pixel thresholds sit on their ROC curves.
    counts : dict
        tp, fn, fp, tn at the image threshold.
    notes : list of str
        Why a metric is missing.
    """

    values: dict[str, float] = field(default_factory=dict)
    image_roc: tuple[np.ndarray, np.ndarray] | None = None
    pixel_roc: tuple[np.ndarray, np.ndarray] | None = None
    pro: tuple[np.ndarray, np.ndarray] | None = None
    image_point: tuple[float, float] | None = None
    pixel_point: tuple[float, float] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def ground_truth(labels: Any, gt_masks: Sequence[np.ndarray | None] | None,
                 n: int) -> tuple[np.ndarray | None, list | None]:
    """Image labels (bool, or None when unknown) and full masks for the pixel metrics (or None).

    Labels default to "mask has a defect pixel" when every mask is known; a good image's missing mask
    counts as all defect-free; a defective image without a mask leaves the pixel metrics out.
    """
    if labels is not None:
        labels = np.asarray(labels).astype(bool).ravel()
        if len(labels) != n:
            raise InputError(f"{len(labels)} labels for {n} images")
    if gt_masks is None:
        return labels, None
    if len(gt_masks) != n:
        raise InputError(f"{len(gt_masks)} ground-truth masks for {n} images")
    if labels is None:
        if any(m is None for m in gt_masks):
            return None, None
        labels = np.array([bool(np.asarray(m).any()) for m in gt_masks])
    if any(m is None and bad for m, bad in zip(gt_masks, labels)):
        return labels, None
    return labels, gt_masks


def compute_metrics(prediction: "Prediction", labels: np.ndarray | None, masks: list | None) -> ReportMetrics:
    """Image AUROC, pixel AUROC and AU-PRO with their curves, as far as the ground truth allows."""
    out = ReportMetrics()
    if labels is None:
        return out
    _image_metrics(out, prediction, labels)
    if masks is None:
        if labels.any():
            out.notes.append("pixel AUROC and AU-PRO need a ground-truth mask for every defective image")
        return out
    _pixel_metrics(out, prediction, masks)
    return out


def _image_metrics(out: ReportMetrics, prediction: "Prediction", labels: np.ndarray) -> None:
    """Image AUROC, its ROC curve and threshold point, and the confusion counts, into `out`."""
    from sklearn.metrics import roc_curve

    from padim.evaluation.metrics import image_auroc

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


def _pixel_metrics(out: ReportMetrics, prediction: "Prediction", masks: list) -> None:
    """Pixel AUROC, AU-PRO, their curves and the pixel threshold's point, into `out`."""
    from sklearn.metrics import roc_curve

    from padim.evaluation.metrics import au_pro, pixel_auroc, pro_curve

    full = [np.zeros(np.shape(m), dtype=bool) if g is None else np.asarray(g) > 0
            for g, m in zip(masks, prediction.maps)]
    truth = np.concatenate([g.ravel() for g in full])
    if not truth.any() or truth.all():
        out.notes.append("pixel AUROC and AU-PRO need both defect and defect-free pixels")
        return
    out.values["pixel_auroc"] = pixel_auroc(full, prediction.maps)
    out.values["au_pro"] = float(au_pro(full, prediction.maps))
    values = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in prediction.maps])
    fpr, tpr, _ = roc_curve(truth, values)
    out.pixel_roc = (fpr, tpr)
    out.pro = pro_curve(full, prediction.maps)
    if prediction.pixel_threshold is not None:
        flagged = values > prediction.pixel_threshold
        out.pixel_point = (float(flagged[~truth].mean()), float(flagged[truth].mean()))


def curves_png(m: ReportMetrics) -> str | None:
    """ROC curves (image, pixel) and the PRO curve as one inline PNG (matplotlib, Agg canvas), or None."""
    if m.image_roc is None and m.pixel_roc is None:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_axes = 2 if m.pro is not None else 1
    fig = Figure(figsize=(5.2 * n_axes, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    _plot_roc(fig.add_subplot(1, n_axes, 1), m)
    if m.pro is not None:
        _plot_pro(fig.add_subplot(1, n_axes, 2), m)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_roc(ax: Any, m: ReportMetrics) -> None:
    """The image and pixel ROC curves, with their thresholds' points."""
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


def _plot_pro(ax: Any, m: ReportMetrics) -> None:
    """The PRO curve, shaded up to the paper's integration limit."""
    assert m.pro is not None
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
