"""Counters of `padim-run serve` and their Prometheus text exposition (format 0.0.4), written by hand."""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUSES = ("ok", "watch", "drifting", "warming_up", "uncalibrated")
DRIFT_GAUGES = (  # (report key, metric name, help)
    ("window", "padim_drift_window_size", "Scores the drift window holds when full (--window)."),
    ("count", "padim_drift_window_count", "Scores in the drift window now."),
    ("share_above", "padim_drift_share_above_threshold", "Share of the window's scores above the image threshold."),
    ("expected_share_above", "padim_drift_expected_share_above_threshold",
     "Share of good images expected above the threshold, (a+1)/(n+1) of the calibration."),
    ("share_above_limit", "padim_drift_share_above_threshold_limit", "Share above the threshold that means drift."),
    ("frame_reject_share", "padim_drift_frame_reject_share", "Share of the window rejected by the frame check."),
    ("psi", "padim_drift_psi", "Population stability index of the window's scores against the calibration's."),
    ("psi_limit", "padim_drift_psi_limit", "PSI above which the window is drifting."),
    ("ks", "padim_drift_ks", "Two-sample Kolmogorov-Smirnov statistic, window against calibration scores."),
    ("ks_limit", "padim_drift_ks_limit", "KS statistic above which the window is drifting (alpha 0.01)."),
)


class Histogram:
    """Observations counted into fixed upper bounds, with their sum."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.total, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))] += 1
        self.total += value
        self.count += 1

    def samples(self, name: str, labels: dict[str, str]) -> list[str]:
        """Cumulative _bucket lines (le), then _sum and _count."""
        lines, running = [], 0
        for bound, n in zip([*map(_number, self.bounds), "+Inf"], self.counts):
            running += n
            lines.append(sample(f"{name}_bucket", {**labels, "le": bound}, running))
        return lines + [sample(f"{name}_sum", labels, self.total), sample(f"{name}_count", labels, self.count)]


class ModelStats:
    """What one bundle has answered since the service started."""

    def __init__(self) -> None:
        self.decisions: Counter[str] = Counter({"defective": 0, "ok": 0})
        self.frame_rejections: Counter[str] = Counter({"blank": 0, "unlike": 0})
        self.latency = Histogram()
        self._lock = threading.Lock()

    def record(self, defective: bool | None, blank: bool, unlike: bool, seconds: float) -> None:
        """Count one answered request."""
        with self._lock:
            self.decisions["unscored" if defective is None else "defective" if defective else "ok"] += 1
            self.frame_rejections["blank"] += int(blank)
            self.frame_rejections["unlike"] += int(unlike)
            self.latency.observe(seconds)


def _number(value: float | int | None) -> str:
    """A sample value as the format writes it (NaN for a missing one)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if isinstance(value, (bool, int)) else repr(float(value))


def escape(value: str) -> str:
    """A label value with backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sample(name: str, labels: dict[str, str], value: Any) -> str:
    """One line: name{label="value",...} value."""
    text = ",".join(f'{k}="{escape(str(v))}"' for k, v in labels.items())
    return f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"


def family(name: str, kind: str, help_text: str, lines: list[str]) -> list[str]:
    """A metric family: its HELP and TYPE lines, then its samples."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]


def exposition(stats: dict[str, ModelStats], drift: dict[str, dict[str, Any]], info: dict[str, dict[str, Any]],
               errors: Counter[int], in_flight: int) -> str:
    """The whole /metrics page for every bundle served."""
    names = list(stats)
    out = family("padim_model_info", "gauge", "A served bundle (value 1) and what it runs.",
                 [sample("padim_model_info", {"model": n, **info[n]}, 1) for n in names])
    out += family("padim_predictions_total", "counter", "Images answered, by decision ('unscored': uncalibrated).",
                  [sample("padim_predictions_total", {"model": n, "decision": d}, c)
                   for n in names for d, c in sorted(stats[n].decisions.items())])
    out += family("padim_frame_rejections_total", "counter", "Images the frame check rejected, by check.",
                  [sample("padim_frame_rejections_total", {"model": n, "check": k}, c)
                   for n in names for k, c in sorted(stats[n].frame_rejections.items())])
    out += family("padim_request_duration_seconds", "histogram", "Time to answer a predict request.",
                  [line for n in names for line in stats[n].latency.samples("padim_request_duration_seconds",
                                                                             {"model": n})])
    for key, metric, help_text in DRIFT_GAUGES:
        out += family(metric, "gauge", help_text, [sample(metric, {"model": n}, drift[n].get(key)) for n in names])
    out += family("padim_drift_status", "gauge", "1 for the drift window's status, 0 for the others.",
                  [sample("padim_drift_status", {"model": n, "status": s}, int(drift[n]["status"] == s))
                   for n in names for s in STATUSES])
    out += family("padim_http_errors_total", "counter", "Requests answered with an error, by status code.",
                  [sample("padim_http_errors_total", {"code": str(code)}, c) for code, c in sorted(errors.items())])
    out += family("padim_requests_in_flight", "gauge", "Predict requests being received, decoded or scored.",
                  [sample("padim_requests_in_flight", {}, in_flight)])
    return "\n".join(out) + "\n"
