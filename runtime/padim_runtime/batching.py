"""Micro-batching for `padim-run serve`: requests that arrive together are scored in one forward pass."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


@dataclass
class BatchInfo:
    """How a request was scored: in a batch of how many, after how long a wait, in how long."""

    batch_size: int
    queue_ms: float
    inference_ms: float


@dataclass
class _Job:
    payload: Any
    future: asyncio.Future
    queued: float


class Batcher:
    """Queue jobs; a worker task takes the first one, waits up to `max_wait_ms` for more (up to `max_batch`) and
    runs `run_batch(payloads) -> results` on `executor`. Batchers of several bundles share one single-thread
    executor, so one forward pass runs at a time. A failing batch is retried job by job, so that one bad input
    fails only its own request."""

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], executor: Executor, max_batch: int = 8,
                 max_wait_ms: float = 10.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1000
        self.batch_sizes: list[int] = []  # the last 1000, for tests and monitoring
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the worker on the running event loop (again after the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._work(self._queue))

    async def submit(self, payload: Any) -> tuple[Any, BatchInfo]:
        """Queue one job and wait for its result."""
        self.start()
        assert self._queue is not None
        job = _Job(payload, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._queue.put_nowait(job)
        return await job.future

    async def _collect(self, queue: asyncio.Queue) -> list[_Job]:
        """The next batch: the first job, then whatever arrives before the deadline."""
        jobs = [await queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            if not queue.empty():
                jobs.append(queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [job for job in jobs if not job.future.done()]  # callers that went away

    async def _work(self, queue: asyncio.Queue) -> None:
        """Run batches until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(queue)
            if not jobs:
                continue
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self.executor, self._run, [job.payload for job in jobs])
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("the server is shutting down"))
                raise
            elapsed = (time.perf_counter() - started) * 1000
            self.batch_sizes = self.batch_sizes[-999:] + [len(jobs)]
            for job, (ok, value) in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if ok:
                    job.future.set_result((value, BatchInfo(len(jobs), (started - job.queued) * 1000, elapsed)))
                else:
                    job.future.set_exception(value)

    def _run(self, payloads: list[Any]) -> list[tuple[bool, Any]]:
        """In the executor: (ok, result or exception) per payload."""
        try:
            results = self.run_batch(payloads)
            if len(results) != len(payloads):
                raise RuntimeError(f"run_batch gave {len(results)} results for {len(payloads)} inputs")
            return [(True, r) for r in results]
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(payloads) == 1:
                return [(False, exc)]
        return [self._run([p])[0] for p in payloads]

    async def close(self) -> None:
        """Stop the worker; jobs still queued fail with RuntimeError."""
        task, queue, self._task = self._task, self._queue, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while queue is not None and not queue.empty():
            job = queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
