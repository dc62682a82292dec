"""What a fit and a predict will cost, before any image is read: peak memory, file sizes, time per image.

The memory figures are the formulas of docs/complexity.md evaluated for the model's P, d, batch and
engine, on top of what the process holds now; the engine's own memory and the times come from one
batch of zeros run through it (with `measure=True`), so they are this machine's, not a table's.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from padim import staircase
from padim.errors import PadimEnvironmentError
from padim.gaussian import GaussianStats, factor_chunk, row_blocks_numel

if TYPE_CHECKING:
    from padim.model import PaDiM

MB = 1 << 20
UPDATE_SLICE_BYTES = 1 << 25  # GaussianStats.update's float64 slice per thread
SCORE_SLICE_BYTES = 1 << 23  # scoring.patch_distances' float32 products per slice
_PROBE_POSITIONS = 64  # positions timed for the statistics update and scoring (then scaled to P)


# ------------------------------------------------------------------------------ the process's memory
def rss_bytes() -> int:
    """Resident memory of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset (VmHWM), in MB; the process peak where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes the cgroup (v2, else v1) still lets this process allocate, or None without a limit."""
    group = ""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                group = line[3:].strip().lstrip("/")
    except OSError:
        pass
    pairs = [(root / group / "memory.max", root / group / "memory.current"),
             (root / "memory.max", root / "memory.current"),
             (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes")]
    for limit_path, usage_path in pairs:
        try:
            limit, usage = limit_path.read_text().strip(), usage_path.read_text().strip()
        except OSError:
            continue
        if limit == "max" or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - int(usage))
    return None


def memory_headroom() -> int | None:
    """Bytes this process can still add: MemAvailable, capped by its cgroup's limit; None if unknown."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    cgroup = _cgroup_headroom()
    known = [v for v in (available, cgroup) if v is not None]
    return min(known) if known else None


# ------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    """Planned peaks (bytes) and times (seconds per image) of fitting n_images and predicting.

    Parameters
    ----------
    n_images : int
        Images the fit is planned for.
    positions, dim, batch_size : int
        The model's positions P, embedding dimension d and batch size.
    engine : str
        The engine (its description once built).
    rss_when_planned : int
        Resident memory of the process when planned, bytes.
    fit_peak, predict_peak : int
        Planned peak resident memory of the fit and of predicting, bytes.
    model_file, resumable_file, export_file : int
        Sizes of the model file, of one with statistics, and of the ONNX export, bytes.
    headroom : int or None
        Memory the process can still get, bytes (None: unknown).
    fit_s_per_image, predict_s_per_image : float or None
        Measured seconds per image (None: not measured).
    fixed_fit_s : float or None
        Measured seconds of the fit's factorisation, whatever the number of images.

    Attributes
    ----------
    The parameters, as given.
    """

    n_images: int
    positions: int
    dim: int
    batch_size: int
    engine: str
    rss_when_planned: int
    fit_peak: int
    predict_peak: int
    model_file: int
    resumable_file: int
    export_file: int
    headroom: int | None
    fit_s_per_image: float | None = None
    predict_s_per_image: float | None = None
    fixed_fit_s: float | None = None

    def fits_in_memory(self) -> bool:
        """Whether the planned fit peak fits in the memory the process can still get."""
        return self.headroom is None or self.fit_peak - self.rss_when_planned <= self.headroom

    def check(self) -> None:
        """Stop with one line naming what to change when the planned fit cannot fit in memory."""
        if not self.fits_in_memory():
            raise PadimEnvironmentError(
                f"planned fit peak {self.fit_peak / MB:,.0f} MB exceeds the "
                f"{(self.rss_when_planned + self.headroom) / MB:,.0f} MB available to this process (d={self.dim}, "
                f"{self.positions} positions): lower n_features (--n-features), the image size "
                f"(--image-size/--crop-size) or the batch size")

    def lines(self) -> list[str]:
        """Human-readable lines, as `padim fit --plan` prints them."""
        def per(s: float | None) -> str:
            return "not measured" if s is None else f"{1e3 * s:.1f} ms/image ({1 / s:.1f} img/s)"

        limit = "unknown" if self.headroom is None else f"{(self.rss_when_planned + self.headroom) / MB:,.0f} MB"
        fit_time = "" if self.fit_s_per_image is None else (
            f", about {self.n_images * self.fit_s_per_image + (self.fixed_fit_s or 0):.0f} s for {self.n_images} images")
        return [
            f"plan: {self.n_images} images, {self.positions} positions x d={self.dim}, batch {self.batch_size}, "
            f"engine {self.engine}",
            f"  fit peak      {self.fit_peak / MB:,.0f} MB "
            f"(process now {self.rss_when_planned / MB:,.0f} MB; available {limit})"
            + ("" if self.fits_in_memory() else "  <- DOES NOT FIT"),
            f"  predict peak  {self.predict_peak / MB:,.0f} MB (streaming, any number of images)",
            f"  model file    {self.model_file / MB:,.0f} MB ({self.resumable_file / MB:,.0f} MB with --resumable); "
            f"ONNX export {self.export_file / MB:,.0f} MB",
            f"  fit           {per(self.fit_s_per_image)}{fit_time}",
            f"  predict       {per(self.predict_s_per_image)}",
        ]


def make_plan(model: "PaDiM", n_images: int, measure: bool = True) -> Plan:
    """The plan of a model whose network is built (PaDiM.plan builds it); measure=False skips the probe."""
    net, pre = model.net_, model.preprocessing
    p = net.grid[0] * net.grid[1]
    d = model.n_components_ if model.reduction == "pca" else int(model.channel_indices_.numel())
    n_total = sum(model.backbone_.channels)
    b = min(model.batch_size, max(1, n_images))
    h, w = pre.output_size
    threads = model.threads or _threads()
    engine_bytes, s_backbone = 0, None
    now = rss_bytes()
    if measure:  # what building and running the engine adds to the process, transients included
        engine_bytes, s_backbone = _probe_engine(model, b, now)
    n_fit = max(1, n_images - (round(model.holdout * n_images) if model.holdout else 0))

    stairs = 4 * p * sum((e - a) * e for a, e in zip(staircase.stair_edges(d), staircase.stair_edges(d)[1:]))
    scatter, means = 8 * p * row_blocks_numel(d), 8 * p * d
    block = 4 * p * d * min(n_fit, max(1, (1 << 28) // (4 * p * d)))
    batch_io = 2 * 4 * b * 3 * h * w + 4 * p * b * max(d, n_total if model.reduction == "pca" else d)
    updating = threads * min(UPDATE_SLICE_BYTES, 8 * p * (block // (4 * p * d) + 1) * d)
    factoring = threads * 3 * 8 * d * d * factor_chunk(d)
    scoring = 2 * 4 * p * d + threads * SCORE_SLICE_BYTES + 4 * 4 * b * h * w  # mean hi/lo, products, maps
    fit_peak = now + engine_bytes + scatter + means + max(block + batch_io + updating, stairs + factoring)
    predict_peak = now + engine_bytes + stairs + means + batch_io + scoring
    packed = p * d * (d + 1) // 2
    frame = 8 * (2 * d + (2 * d) * (2 * d + 1) // 2)  # the frame check's mean and packed scatter (float64)
    weights = sum(t.numel() * t.element_size() for t in (*net.extractor.parameters(), *net.extractor.buffers()))
    smoothing = 4 * (net.smooth_h.numel() + net.smooth_w.numel())
    plan = Plan(
        n_images=n_images, positions=p, dim=d, batch_size=b, engine=_engine_name(model), rss_when_planned=now,
        fit_peak=int(fit_peak), predict_peak=int(predict_peak), model_file=4 * packed + means + frame,
        resumable_file=12 * packed + means + frame, export_file=weights + stairs + means + smoothing, headroom=memory_headroom(),
    )
    if measure and s_backbone is not None:
        s_update, s_score, fixed = _probe_statistics(p, d, b, min(n_fit, block // (4 * p * d)), threads)
        plan.fit_s_per_image = s_backbone + s_update
        plan.predict_s_per_image = s_backbone + s_score
        plan.fixed_fit_s = fixed
    return plan


def _threads() -> int:
    """CPU threads the scoring slices use."""
    from padim.utils.cpus import available_cpus

    return available_cpus()


def _engine_name(model: "PaDiM") -> str:
    """The engine built for the model, or the name it asks for."""
    engine = getattr(model, "engine_", None)
    return engine.describe() if engine is not None else str(model.engine)


def _best_time(fn: Any, repeat: int = 3) -> float:
    """Shortest of `repeat` timed calls after one warm-up call (first calls pay for compiling and thread start)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _probe_engine(model: "PaDiM", batch: int, before: int) -> tuple[int, float]:
    """(peak memory beyond `before` of building and running the engine, seconds per image), on zeros."""
    reset_peak_rss()
    engine = model.engine_for_device()
    x = torch.zeros(batch, 3, *model.preprocessing.output_size)
    with torch.no_grad():
        seconds = _best_time(lambda: engine(x), repeat=2) / batch
    return max(0, int(peak_rss_mb() * MB) - before), seconds


def _probe_statistics(p: int, d: int, b: int, block: int, threads: int) -> tuple[float, float, float]:
    """Seconds per image of the statistics update and of scoring, and the factorisation's total, timed on
    a few positions and scaled to P (whose slices will run in parallel, one thread each)."""
    from padim.gaussian import precision_factor
    from padim.scoring import patch_distances

    k = min(p, _PROBE_POSITIONS)
    gen = torch.Generator().manual_seed(0)
    block = max(1, block)
    stats = GaussianStats.empty(k, d)
    x = torch.randn(k, block, d, generator=gen)
    s_update = _best_time(lambda: stats.update(x)) / block
    fixed = _best_time(lambda: precision_factor(stats, 0.01), repeat=1)
    stairs = precision_factor(stats, 0.01)
    mean = torch.zeros(k, d)
    e = torch.randn(k, b, d, generator=gen)
    s_score = _best_time(lambda: patch_distances(e.clone(), stairs, mean, mean)) / b
    scale = p / k / threads if k < p else 1.0  # P positions will run as slices on every thread
    return s_update * scale, s_score * scale, fixed * scale


def describe(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready numbers (MB and seconds)."""
    return {"n_images": plan.n_images, "fit_peak_mb": plan.fit_peak / MB, "predict_peak_mb": plan.predict_peak / MB,
            "model_file_mb": plan.model_file / MB, "export_file_mb": plan.export_file / MB,
            "fit_s_per_image": plan.fit_s_per_image, "predict_s_per_image": plan.predict_s_per_image}
