"""Drift: a bundle's latest scores in a rolling window against the good images it was calibrated on (numpy only).

A bundle's calibration (bundle.json) holds the anomaly scores of its n good calibration images, the image
threshold set on them at a target false-positive rate (fpr) and the frame check's threshold. Over the last
`window` images scored, `DriftMonitor.report()` gives:

- share_above: the share of scores above the image threshold, beside expected_share_above = (a + 1) / (n + 1),
  where a of the n calibration scores lie above the threshold (the threshold is one of the calibration scores,
  the (n - a)-th smallest, and a new good image exceeds the (n - a)-th smallest of n good scores with that
  probability: 1/7 for 6 calibration images, 0.011 for 1000 at a 1% fpr);
- frame_reject_share: the share the frame check rejected (blank, or unlike any training frame); its threshold is
  the fpr's with a margin of 2, so good images reach it less often than fpr, which is the share used as expected;
- psi: the population stability index sum((w - c) ln(w / c)) of the window's scores over k bins cut at the
  calibration scores' quantiles (k = n // 5 clipped to 2..10; shares floored at 1e-4);
- ks: the two-sample Kolmogorov-Smirnov statistic, the largest gap between the window's and the calibration
  scores' distribution functions.

status, from the first rule that holds:
- "uncalibrated": the bundle has no calibration (counts only);
- "warming_up": fewer than min_count scores in the window;
- "drifting": psi > psi_limit, or ks > ks_limit, or share_above > share_above_limit, or frame_reject_share more
  than 3 binomial standard errors above fpr. share_above_limit is expected_share_above plus 3 standard errors that
  count the threshold's own uncertainty besides the window's binomial noise: the share of good images above an
  order statistic of n is Beta(a + 1, n - a) distributed (6 calibration images: 14% +- 12%). psi_limit is the
  conventional 0.25 ("significant shift") or, when larger, the 99th percentile of the PSI of two samples of one
  distribution of these sizes, about chi2_{k-1} (1/N + 1/n) for a window of N: with few calibration images their
  own sampling noise alone passes 0.25. ks_limit is the test's critical value at alpha = 0.01,
  1.628 sqrt((N + n) / (N n));
- "watch": psi > psi_watch, the conventional 0.1 ("moderate shift") or the same null level's 90th percentile;
- "ok".
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

import numpy as np

DEFAULT_WINDOW = 500
DEFAULT_MIN_COUNT = 50
PSI_WATCH, PSI_DRIFT = 0.1, 0.25  # the conventional PSI levels of a moderate and a significant shift
SHARE_FLOOR = 1e-4  # a bin's share is at least this in the PSI (an empty bin would make it infinite)
KS_C = 1.628  # c(alpha) of the two-sample KS test at alpha = 0.01
SHARE_SIGMAS = 3.0
Z90, Z99 = 1.2816, 2.3263  # standard normal quantiles


def chi2_quantile(dof: int, z: float) -> float:
    """The chi-square quantile at the standard normal quantile z (Wilson-Hilferty)."""
    c = 2.0 / (9.0 * dof)
    return dof * max(0.0, 1.0 - c + z * math.sqrt(c)) ** 3


def psi(window: np.ndarray, edges: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of scores over bins (interior `edges`) whose reference shares are `expected`."""
    counts = np.bincount(np.searchsorted(edges, window, side="right"), minlength=len(expected))
    actual = np.maximum(counts / max(len(window), 1), SHARE_FLOOR)
    ref = np.maximum(expected, SHARE_FLOOR)
    return float(np.sum((actual - ref) * np.log(actual / ref)))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical distribution functions."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    gap = np.searchsorted(a, points, side="right") / len(a) - np.searchsorted(b, points, side="right") / len(b)
    return float(np.abs(gap).max())


class Reference:
    """What the calibration says a good stream looks like."""

    def __init__(self, calibration: dict[str, Any]) -> None:
        self.scores = np.sort(np.asarray(calibration["image_scores"], np.float64))
        self.threshold = float(calibration["image_threshold"])
        self.fpr = float(calibration["fpr"])
        n = len(self.scores)
        above = int(np.sum(self.scores > self.threshold))
        self.expected_share_above = (above + 1) / (n + 1)
        alpha, beta = above + 1, max(n - above, 1)  # the good share above the threshold ~ Beta(alpha, beta)
        self.share_variance = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
        k = int(np.clip(n // 5, 2, 10))
        self.edges = np.unique(np.quantile(self.scores, np.arange(1, k) / k))
        counts = np.bincount(np.searchsorted(self.edges, self.scores, side="right"), minlength=len(self.edges) + 1)
        self.expected_bins = counts / n

    def limits(self, count: int) -> dict[str, float]:
        """PSI and KS levels for a window of `count` scores (see the module docstring)."""
        n, dof = len(self.scores), len(self.expected_bins) - 1
        scale = 1.0 / count + 1.0 / n
        mu = self.expected_share_above
        return {"psi_watch": max(PSI_WATCH, chi2_quantile(dof, Z90) * scale),
                "psi_limit": max(PSI_DRIFT, chi2_quantile(dof, Z99) * scale),
                "ks_limit": KS_C * math.sqrt(scale),
                "share_above_limit": mu + SHARE_SIGMAS * math.sqrt(mu * (1 - mu) / count + self.share_variance)}


class DriftMonitor:
    """The last `window` scores and frame-check outcomes of one bundle, and how they compare with its calibration."""

    def __init__(self, calibration: dict[str, Any] | None, window: int = DEFAULT_WINDOW,
                 min_count: int = DEFAULT_MIN_COUNT) -> None:
        if window < 1:
            raise ValueError(f"drift window must be >= 1, got {window}")
        self.window, self.min_count = int(window), max(1, min(int(min_count), int(window)))
        self.reference = None if not calibration or not calibration.get("image_scores") else Reference(calibration)
        self._items: deque[tuple[float, bool]] = deque(maxlen=self.window)
        self._lock = threading.Lock()

    def add(self, score: float, frame_rejected: bool = False) -> None:
        """Record one scored image."""
        with self._lock:
            self._items.append((float(score), bool(frame_rejected)))

    def clear(self) -> None:
        """Forget the window (e.g. after a line change that was checked)."""
        with self._lock:
            self._items.clear()

    def report(self) -> dict[str, Any]:
        """The window's figures and status, JSON-ready (None where there is nothing to compute)."""
        with self._lock:
            items = list(self._items)
        scores = np.array([s for s, _ in items], np.float64)
        rejected = np.array([r for _, r in items], bool)
        count = len(items)
        out: dict[str, Any] = {"window": self.window, "count": count, "min_count": self.min_count,
                               "frame_reject_share": float(rejected.mean()) if count else None,
                               "score_median": float(np.median(scores)) if count else None,
                               "score_p95": float(np.quantile(scores, 0.95)) if count else None}
        ref = self.reference
        if ref is None:
            return {**out, "status": "uncalibrated", "calibrated": False}
        out.update({"calibrated": True, "calibration_count": len(ref.scores), "threshold": ref.threshold,
                    "fpr": ref.fpr, "expected_share_above": ref.expected_share_above,
                    "calibration_median": float(np.median(ref.scores)),
                    "calibration_p95": float(np.quantile(ref.scores, 0.95)), "bins": len(ref.expected_bins),
                    "share_above": None, "psi": None, "ks": None, "psi_watch": None, "psi_limit": None,
                    "ks_limit": None, "share_above_limit": None})
        if not count:
            return {**out, "status": "warming_up", "reasons": []}
        out.update(ref.limits(count))
        out["share_above"] = float(np.mean(scores > ref.threshold))
        out["psi"] = psi(scores, ref.edges, ref.expected_bins)
        out["ks"] = ks_statistic(scores, ref.scores)
        reasons = self._reasons(out, count)
        if count < self.min_count:
            status = "warming_up"
        elif reasons:
            status = "drifting"
        else:
            status = "watch" if out["psi"] > out["psi_watch"] else "ok"
        return {**out, "status": status, "reasons": reasons}

    @staticmethod
    def _reasons(r: dict[str, Any], count: int) -> list[str]:
        """Which drift rules a report breaks, in words."""
        reasons = []
        if r["psi"] > r["psi_limit"]:
            reasons.append(f"score distribution shifted (PSI {r['psi']:.3g} > {r['psi_limit']:.3g})")
        if r["ks"] > r["ks_limit"]:
            reasons.append(f"score distribution differs (KS {r['ks']:.3g} > {r['ks_limit']:.3g})")
        if r["share_above"] > r["share_above_limit"]:
            reasons.append(f"{r['share_above']:.1%} above the threshold (expected {r['expected_share_above']:.1%}, "
                           f"limit {r['share_above_limit']:.1%})")
        if r["frame_reject_share"] > r["fpr"] + SHARE_SIGMAS * math.sqrt(r["fpr"] * (1 - r["fpr"]) / count):
            reasons.append(f"{r['frame_reject_share']:.1%} rejected by the frame check (expected under {r['fpr']:.1%})")
        return reasons
