"""Adaptive micro-batching: concurrent requests share one model call.

While the model thread is busy, new requests queue up; when it is free, everything queued (up to
``max_batch_size`` rows) goes in one call. A lone request therefore runs at once: there is no timer on
the first call, and ``max_wait_ms`` only applies while requests keep arriving. Each caller gets exactly
its own rows back; if a batch call raises, its requests are retried one by one so a failing request
fails alone. Cancelled callers are skipped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from service.errors import Overloaded


@dataclass(slots=True)
class Job:
    rows: list[Any]
    top_k: int | None
    future: asyncio.Future[list[bytes]]


RunFn = Callable[[list[Any], int | None], list[bytes]]


class MicroBatcher:
    def __init__(self, run: RunFn, *, max_batch_size: int, max_wait_ms: float, max_queue_rows: int) -> None:
        self._run = run
        self._max_batch = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._max_queue = max_queue_rows
        self._queue: deque[Job] = deque()
        self._queued_rows = 0
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None  # held so the task is not garbage-collected
        # One model thread: the model call releases the GIL in its numeric kernels, and one call at a
        # time is what makes batching happen instead of contention.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.batches = 0  # model calls made: exported as a metric and read by the tests

    async def submit(self, rows: list[Any], top_k: int | None) -> list[bytes]:
        if self._queued_rows + len(rows) > self._max_queue:
            raise Overloaded(
                f"{self._queued_rows} rows are waiting for the model; try again shortly",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        job = Job(rows, top_k, loop.create_future())
        self._queue.append(job)
        self._queued_rows += len(rows)
        if not self._draining:
            self._draining = True
            self._drainer = loop.create_task(self._drain())
        return await job.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        try:
            while self._queue:
                if not first and self._max_wait and self._queued_rows < self._max_batch:
                    await asyncio.sleep(self._max_wait)
                first = False
                batch = self._take()
                if batch:
                    await loop.run_in_executor(self._executor, self._call, batch, loop)
        finally:
            self._draining = False

    def _take(self) -> list[Job]:
        batch: list[Job] = []
        size = 0
        same_top_k = self._queue[0].top_k if self._queue else None
        while self._queue:
            job = self._queue[0]
            if batch and (size + len(job.rows) > self._max_batch or job.top_k != same_top_k):
                break
            self._queue.popleft()
            self._queued_rows -= len(job.rows)
            if job.future.done():  # the caller went away
                continue
            batch.append(job)
            size += len(job.rows)
        return batch

    def _call(self, batch: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        """In the model thread: one call for the batch; on failure, one call per job to isolate it."""
        self.batches += 1
        rows = [row for job in batch for row in job.rows]
        try:
            results = self._run(rows, batch[0].top_k)
        except Exception as batch_error:
            if len(batch) == 1:
                loop.call_soon_threadsafe(_settle, batch[0].future, None, batch_error)
                return
            for job in batch:
                try:
                    loop.call_soon_threadsafe(_settle, job.future, self._run(job.rows, job.top_k), None)
                except Exception as exc:
                    loop.call_soon_threadsafe(_settle, job.future, None, exc)
            return
        start = 0
        settled = []
        for job in batch:
            end = start + len(job.rows)
            settled.append((job.future, results[start:end]))
            start = end
        loop.call_soon_threadsafe(_settle_all, settled)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future[list[bytes]], result: list[bytes] | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result or [])


def _settle_all(settled: list[tuple[asyncio.Future[list[bytes]], list[bytes]]]) -> None:
    for future, result in settled:
        if not future.done():
            future.set_result(result)
