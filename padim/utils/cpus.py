"""How many CPUs this process may really use, from its CPU set and cgroup quota.

torch and OpenMP default to the machine's core count; inside a container with a CPU quota,
or under taskset, that oversubscribes the CPUs the process actually has and OpenMP threads spin.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from padim.errors import InputError

if TYPE_CHECKING:
    import torch

ENV_VAR = "PADIM_NUM_THREADS"


def affinity_cpus() -> int:
    """The number of CPUs in this process's CPU set (affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v2_group(proc_cgroup: Path) -> str | None:
    text = _read(proc_cgroup)
    for line in (text or "").splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def _v2_quota(root: Path, proc_cgroup: Path) -> float | None:
    group = _v2_group(proc_cgroup)
    candidates = [root / group.lstrip("/") / "cpu.max"] if group else []
    for path in [*candidates, root / "cpu.max"]:
        text = _read(path)
        if text is None:
            continue
        fields = text.split()
        if len(fields) != 2 or fields[0] == "max":
            return None
        return _ratio(*fields)
    return None


def _v1_quota(root: Path) -> float | None:
    for name in ("cpu", "cpu,cpuacct"):
        quota = _read(root / name / "cpu.cfs_quota_us")
        period = _read(root / name / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _ratio(quota, period)
    return None


def cgroup_quota_cpus(root: str | os.PathLike = "/sys/fs/cgroup", *,
                      proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float | None:
    """The CPU limit (in CPUs, possibly fractional) set by cgroup v2 or v1, or None when there is none."""
    root = Path(root)
    quota = _v2_quota(root, Path(proc_cgroup))
    return quota if quota is not None else _v1_quota(root)


def _env_threads() -> int | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"{ENV_VAR}={value!r}: expected a positive integer")
    return n


def available_cpus() -> int:
    """The number of CPUs this process may use: PADIM_NUM_THREADS, else its CPU set capped by its quota."""
    override = _env_threads()
    if override is not None:
        return override
    n = affinity_cpus()
    quota = cgroup_quota_cpus()
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def configure_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count to n (default: available_cpus()) and return it."""
    import torch

    n = n or available_cpus()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to n inside the block, restored after (in this thread).

    For short torch work in a pass another runtime does the heavy part of (building the network,
    tracing the export, copies): beside a 2-thread CPU job, two OpenMP threads wait on each other at
    every operator (a batch-2 Lite0 forward took 1.0-1.5 s against 0.07-0.13 s on one thread; quiet,
    0.03 against 0.05-0.07 s).
    """
    import torch

    outer = torch.get_num_threads()
    if outer != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if outer != n:
            torch.set_num_threads(outer)


def parallel_slices(fn: Callable[[slice], None], total: int, step: int, threads: int | None = None, *,
                    inner: int = 1) -> None:
    """Call fn on consecutive slices of range(total), spread over threads that each run torch with `inner` threads.

    Per-position work (statistics, Cholesky, scoring) splits into independent slices. Running them
    in our own threads with one OpenMP thread each avoids OpenMP's team barriers: on 2 cores next to
    another 2-thread job, a fit's statistics update ran 1.8-9x faster this way than with torch's own
    2-thread kernels, and quiet it was 1.25x faster. torch's thread count is restored afterwards.
    A single worker runs the slices in order, in the caller's thread (and thread count).
    """
    slices = [slice(s, min(s + step, total)) for s in range(0, total, max(1, step))]
    workers = min(threads or available_cpus(), len(slices))
    if workers <= 1:
        for sl in slices:
            fn(sl)
        return
    import torch

    outer = torch.get_num_threads()

    def run(sl: slice) -> None:
        torch.set_num_threads(inner)  # per thread: OpenMP's team size is a thread-local setting
        fn(sl)

    try:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(run, slices):
                pass
    finally:
        torch.set_num_threads(outer)


def run_slices(fn: Callable[[slice], None], total: int, step: int, device: "torch.device",
               threads: int | None = None) -> None:
    """parallel_slices on the CPU; on a GPU the slices run in order (the device is parallel already)."""
    if device.type == "cpu":
        parallel_slices(fn, total, step, threads)
    else:
        for start in range(0, total, step):
            fn(slice(start, min(start + step, total)))
