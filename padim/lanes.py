"""Lanes: the parts of a batch run side by side, each through its own engine of a share of the threads.

An engine of 2 threads and the scoring after it wait on each other at every OpenMP barrier and
every small kernel; two 1-thread engines, each embedding and scoring half of the batch, do not.
Measured alternating in one process (batches of 32, OpenVINO, same scores): on a 2-vCPU AVX-512
EPYC predict 5-13% faster (ResNet18-Rd100 67.6-70.2 img/s against 60.7-67.1; Lite0 123.6-147.7
against 109.5-137.3); on a 2-vCPU AVX2 EPYC within the noise (Lite0 +9% and -4%, R18 -3% and -10%:
README.md's performance section, benchmarks/lanes.py). Beside another 2-thread CPU job the gain is
large: the engine alone 84.1 against 51.4 img/s (Lite0, AVX2), so the fit embeds through lanes too
(lane_embeddings; benchmarks/README.md). A lane runs its part one image an inference
(padim.engine.LANE_SUB_BATCH): a single thread keeps one image's activations in its caches. Batches below LANE_MIN_BATCH keep the whole
engine: halves of a small batch would score through the slower small-batch path, and batch-1
latency needs every thread on the one image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from padim_runtime.scoring import one_blas_thread

from padim.data import Batch
from padim.scoring import NUMPY_MIN_BATCH
from padim.utils.cpus import parallel_slices

T = TypeVar("T")
LANE_MIN_BATCH = 2 * NUMPY_MIN_BATCH  # each half still scores through the batched numpy kernel


def lane_parts(n: int, lanes: int) -> list[slice]:
    """Contiguous, non-empty, near-equal parts of range(n), at most one per lane."""
    step = -(-n // max(1, lanes))
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def batch_lanes(engine: Any, n: int) -> list[Any]:
    """The lanes a batch of n images runs through: the engine's, for n >= LANE_MIN_BATCH; else none."""
    return engine.lanes() if n >= LANE_MIN_BATCH else []


def run_in_lanes(fn: Callable[[Any, slice], T], n: int, lanes: Sequence[Any]) -> list[T]:
    """fn(lane, part) for the lane_parts of range(n), side by side, each lane's torch on its engine's threads.

    Results come back in the order of the parts; an exception in any part is raised here.
    """
    parts = lane_parts(n, len(lanes))
    step = parts[0].stop - parts[0].start
    results: dict[int, T] = {}

    def part(sl: slice) -> None:
        results[sl.start] = fn(lanes[sl.start // step], sl)

    with one_blas_thread:  # numpy's products in every lane, on one BLAS thread each
        parallel_slices(part, n, step, threads=len(parts), inner=max(1, lanes[0].threads))
    return [results[sl.start] for sl in parts]


def lane_embeddings(batches: Iterable[Batch], engine: Any, project: Callable[[Any], Any]) -> Iterator[tuple[Batch, Any]]:
    """(batch or part, positions-first embeddings) of every batch, a batch of LANE_MIN_BATCH or more as one
    part per lane, embedded side by side (the fit's engine: beside a 2-thread CPU job two single-thread
    lanes embedded Lite0 at 1.6x the whole engine's speed, quiet at 1.1x).

    A part's embeddings live in its lane's buffers until that lane's next call: each is yielded before
    the next batch is embedded.
    """
    with torch.no_grad():
        for batch in batches:
            lanes = batch_lanes(engine, len(batch.pixels))
            if not lanes:
                yield batch, project(engine(batch.pixels))
                continue

            def part(lane: Any, sl: slice) -> Any:  # run_in_lanes returns before the loop moves on
                with torch.no_grad():  # grad mode is per thread
                    return project(lane(batch.pixels[sl]))

            for sl, emb in zip(lane_parts(len(batch.pixels), len(lanes)), run_in_lanes(part, len(batch.pixels), lanes)):
                yield batch.part(sl), emb
