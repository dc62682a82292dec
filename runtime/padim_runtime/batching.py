"""A generic micro-batcher: jobs that arrive together run as one batch, on one worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 10.0
HISTORY = 1000  # batch sizes remembered, for tests and monitoring


@dataclass
class BatchInfo:
    """How a request was scored.

    Attributes
    ----------
    batch_size : int
        How many jobs ran in its batch.
    queue_ms : float
        How long it waited before its batch started.
    inference_ms : float
        How long its batch ran.
    """

    batch_size: int
    queue_ms: float
    inference_ms: float


@dataclass
class _Job:
    """One submitted payload and the future its caller awaits."""

    payload: Any
    future: asyncio.Future
    enqueued: float


class Batcher:
    """Collect jobs that arrive together and run them as one batch, on ONE thread, one batch at a time.

    After the first job of a batch arrives, waits up to `max_wait_ms` for more (jobs that queued while
    the previous batch ran are taken at once), up to `max_batch`. If `run_batch` raises, the jobs of
    that batch are retried one by one so that one bad input fails only its own request. Started lazily
    on the running event loop (or by `start`).

    Parameters
    ----------
    run_batch : callable
        ``run_batch(payloads) -> results``, one result per payload, run in the worker thread.
    executor : Executor or None
        Where batches run: batchers that share a single-thread executor run one batch at a time between
        them (the caller shuts it down). None: a single-thread one of its own, made on the first start.
    max_batch : int
        Most jobs in one batch (>= 1).
    max_wait_ms : float
        How long a batch waits for more jobs after its first (>= 0).

    Attributes
    ----------
    batch_sizes : list of int
        The sizes of the last 1000 batches.
    waiting : int
        Jobs queued, not yet running.
    """

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], *, executor: Executor | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.batch_sizes: list[int] = []
        self._executor, self._owns_executor = executor, executor is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._running: list[_Job] = []

    @property
    def waiting(self) -> int:
        """Jobs queued, not yet running."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> asyncio.Queue:
        """Start the worker on the running event loop (again, after a loop change); returns its queue."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="padim-infer")
            self._task = loop.create_task(self._work(self._queue))
        assert self._queue is not None
        return self._queue

    async def submit(self, payload: Any) -> tuple[Any, BatchInfo]:
        """Queue one job and wait for its result."""
        queue = self.start()
        job = _Job(payload, asyncio.get_running_loop().create_future(), time.perf_counter())
        queue.put_nowait(job)
        return await job.future

    async def _collect(self, queue: asyncio.Queue) -> list[_Job]:
        """The next batch: the first job, then whatever arrives within max_wait, up to max_batch."""
        jobs = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                jobs.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [j for j in jobs if not j.future.done()]  # drop jobs whose caller went away

    async def _work(self, queue: asyncio.Queue) -> None:
        """The worker: batch after batch, each run in the executor thread."""
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(queue)
            if not jobs:
                continue
            self._running = jobs
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run, [j.payload for j in jobs])
            finally:
                self._running = []
            self._settle(jobs, outcomes, started)

    def _settle(self, jobs: list[_Job], outcomes: list[tuple[bool, Any]], started: float) -> None:
        """Hand each waiting caller its result or its exception."""
        inference_ms = (time.perf_counter() - started) * 1000
        self.batch_sizes = self.batch_sizes[1 - HISTORY:] + [len(jobs)]
        for job, (ok, value) in zip(jobs, outcomes):
            if job.future.done():
                continue
            if ok:
                job.future.set_result((value, BatchInfo(len(jobs), (started - job.enqueued) * 1000, inference_ms)))
            else:
                job.future.set_exception(value)

    def _run(self, payloads: list[Any]) -> list[tuple[bool, Any]]:
        """In the worker thread: the whole batch, or each job alone when the batch fails."""
        try:
            results = self.run_batch(payloads)
            if len(results) != len(payloads):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(payloads)} inputs")
            return [(True, r) for r in results]
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(payloads) == 1:
                return [(False, exc)]
        return [self._run([p])[0] for p in payloads]

    async def close(self) -> None:
        """Stop the worker; jobs still waiting fail with RuntimeError. An executor of its own is shut down."""
        task, queue = self._task, self._queue
        self._task = None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = list(self._running)
        while queue is not None and not queue.empty():
            pending.append(queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
