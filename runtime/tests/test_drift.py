"""The drift monitor and the Prometheus exposition, on made-up scores (no bundle needed)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from padim_runtime.drift import DriftMonitor, ks_statistic, psi
from padim_runtime.metrics import ModelStats, escape, exposition

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
                    r'(NaN|[+-]Inf|-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)$')


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text exposition, each family announced by HELP and TYPE before its samples."""
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped") and name not in typed
            typed[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"{name} has no TYPE line before it"
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        assert (name, labels) not in samples, f"duplicate sample {line!r}"
        samples[(name, labels)] = float(match.group(3))
    return samples


def calibration(n: int, seed: int = 0, fpr: float = 0.01) -> dict:
    """A calibration block as bundle.json holds it: n good scores, the threshold at the fpr."""
    scores = np.sort(np.random.default_rng(seed).gamma(4.0, 25.0, n) + 800.0)
    threshold = float(scores[n - 1 - int(np.floor(fpr * n + 1e-9))])
    return {"fpr": fpr, "source": "test", "image_threshold": threshold, "pixel_threshold": 1.0,
            "frame_threshold": 40.0, "image_scores": scores.tolist()}


def feed(monitor: DriftMonitor, scores: np.ndarray, rejected: np.ndarray | None = None) -> dict:
    for i, s in enumerate(scores):
        monitor.add(float(s), bool(rejected[i]) if rejected is not None else False)
    return monitor.report()


def test_expected_share_above_is_the_order_statistics():
    for n, want in ((6, 1 / 7), (200, 3 / 201), (1000, 11 / 1001)):
        assert DriftMonitor(calibration(n)).reference.expected_share_above == pytest.approx(want)


def test_a_good_stream_is_ok_and_a_shifted_one_drifts():
    cal, rng = calibration(200), np.random.default_rng(1)
    good = feed(DriftMonitor(cal), rng.gamma(4.0, 25.0, 500) + 800.0)
    assert good["status"] == "ok" and good["reasons"] == []
    assert good["psi"] < 0.1 and good["ks"] < good["ks_limit"]
    assert good["share_above"] <= good["share_above_limit"]
    up = feed(DriftMonitor(cal), rng.gamma(4.0, 25.0, 500) + 860.0)  # +0.6 standard deviations
    assert up["status"] == "drifting"
    assert up["psi"] > 0.25 > good["psi"] and up["ks"] > up["ks_limit"]
    assert up["share_above"] > up["share_above_limit"] > good["share_above"]
    assert any("PSI" in r for r in up["reasons"]) and any("above the threshold" in r for r in up["reasons"])
    down = feed(DriftMonitor(cal), rng.gamma(4.0, 25.0, 500) + 740.0)  # darker images score lower: still drift
    assert down["status"] == "drifting" and down["share_above"] < good["share_above"] + 0.01
    assert down["psi"] > 0.25 and down["ks"] > down["ks_limit"]


def test_frame_rejections_alone_make_drift():
    cal, rng = calibration(200), np.random.default_rng(2)
    scores = rng.gamma(4.0, 25.0, 300) + 800.0
    r = feed(DriftMonitor(cal, window=300), scores, np.arange(300) % 10 == 0)  # 10% rejected, scores good
    assert r["status"] == "drifting" and r["frame_reject_share"] == pytest.approx(0.1)
    assert r["reasons"] == [next(x for x in r["reasons"] if "frame check" in x)]


def test_small_calibrations_widen_the_limits_instead_of_crying_wolf():
    rng = np.random.default_rng(3)
    alarms = Counter()
    for seed in range(60):
        cal = calibration(6, seed)
        alarms[feed(DriftMonitor(cal), rng.gamma(4.0, 25.0, 500) + 800.0)["status"]] += 1
    assert alarms["drifting"] <= 3  # a 1% rule each, four rules, 60 tries
    r = DriftMonitor(calibration(6)).reference.limits(500)
    assert r["psi_limit"] > 1.0 and r["ks_limit"] > 0.6  # 6 good images cannot pin a distribution down


def test_the_window_rolls_warms_up_and_recovers():
    cal, rng = calibration(200), np.random.default_rng(4)
    monitor = DriftMonitor(cal, window=100, min_count=20)
    assert monitor.report()["status"] == "warming_up" and monitor.report()["count"] == 0
    assert feed(monitor, rng.gamma(4.0, 25.0, 10) + 800.0)["status"] == "warming_up"
    assert feed(monitor, rng.gamma(4.0, 25.0, 300) + 900.0)["status"] == "drifting"
    back = feed(monitor, rng.gamma(4.0, 25.0, 100) + 800.0)  # the shifted scores have left the window
    assert back["count"] == 100 and back["status"] in ("ok", "watch")
    monitor.clear()
    assert monitor.report()["count"] == 0


def test_uncalibrated_bundles_get_counts_only():
    r = feed(DriftMonitor(None, window=10), np.arange(15.0), np.arange(15) % 5 == 0)
    assert r["status"] == "uncalibrated" and r["count"] == 10 and r["frame_reject_share"] == pytest.approx(0.2)
    assert "psi" not in r


def test_statistics():
    a = np.arange(100.0)
    assert ks_statistic(a, a) == 0.0 and ks_statistic(a, a + 1000) == 1.0
    assert ks_statistic(a, a + 50) == pytest.approx(0.5)
    edges, expected = np.array([25.0, 50.0, 75.0]), np.full(4, 0.25)
    assert psi(a, edges, expected) == pytest.approx(0.0, abs=1e-3)
    shifted = psi(a + 25, edges, expected)  # one bin emptied, one doubled
    assert shifted == pytest.approx(0.25 * np.log(0.5 / 0.25) + (1e-4 - 0.25) * np.log(1e-4 / 0.25), rel=0.05)
    with pytest.raises(ValueError):
        DriftMonitor(None, window=0)


def test_exposition_parses_with_missing_values_and_odd_labels():
    stats = {"a": ModelStats(), 'b"\\x': ModelStats()}
    stats["a"].record(True, True, False, 0.02)
    stats["a"].record(False, False, False, 3.0)
    stats['b"\\x'].record(None, False, False, 20.0)
    drift = {"a": DriftMonitor(calibration(50)).report(), 'b"\\x': DriftMonitor(None).report()}
    info = {n: {"backbone": "efficientnet_lite0", "engine": "openvino"} for n in stats}
    samples = parse_exposition(exposition(stats, drift, info, Counter({404: 2}), 1))
    a = frozenset({("model", "a")})
    assert samples[("padim_predictions_total", a | {("decision", "defective")})] == 1
    assert samples[("padim_predictions_total", a | {("decision", "ok")})] == 1
    assert samples[("padim_frame_rejections_total", a | {("check", "blank")})] == 1
    assert samples[("padim_request_duration_seconds_bucket", a | {("le", "0.025")})] == 1
    assert samples[("padim_request_duration_seconds_bucket", a | {("le", "+Inf")})] == 2
    assert samples[("padim_request_duration_seconds_count", a)] == 2
    assert samples[("padim_request_duration_seconds_sum", a)] == pytest.approx(3.02)
    odd = frozenset({("model", escape('b"\\x'))})
    assert samples[("padim_predictions_total", odd | {("decision", "unscored")})] == 1
    assert np.isnan(samples[("padim_drift_psi", odd)]) and np.isnan(samples[("padim_drift_psi", a)])
    assert samples[("padim_drift_status", a | {("status", "warming_up")})] == 1
    assert samples[("padim_drift_status", odd | {("status", "uncalibrated")})] == 1
    assert samples[("padim_http_errors_total", frozenset({("code", "404")}))] == 2
    assert samples[("padim_requests_in_flight", frozenset())] == 1
