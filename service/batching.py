"""Adaptive micro-batching: concurrent requests share one model call.

While the model thread is busy, new requests queue up; when it is free, everything queued (up to
``max_batch_size`` rows) goes in one call. A lone request therefore runs at once: there is no timer on
the first call, and ``max_wait_ms`` only applies while requests keep arriving. Each caller gets exactly
its own rows back; if a batch call raises, its requests are retried one by one so a failing request
fails alone. Cancelled callers are skipped.

The hand-off is two queue operations and no tasks: the event loop puts a batch on the model thread's
inbox and goes on; the model thread answers with one ``call_soon_threadsafe`` that settles the
batch's futures and sends the next batch. (An executor per batch, with a drain task around it, costs
a lone request about 0.1 ms more.)
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

from service.errors import Overloaded


@dataclass(slots=True)
class Job:
    rows: list[Any]
    top_k: int | None
    future: asyncio.Future[list[bytes]]


RunFn = Callable[[list[Any], int | None], list[bytes]]
Outcome = tuple[asyncio.Future[list[bytes]], list[bytes] | None, BaseException | None]


class MicroBatcher:
    def __init__(self, run: RunFn, *, max_batch_size: int, max_wait_ms: float, max_queue_rows: int) -> None:
        self._run = run
        self._max_batch = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._max_queue = max_queue_rows
        self._queue: deque[Job] = deque()
        self._queued_rows = 0
        self._busy = False  # a batch is with the model thread, or a wait timer will send the next one
        # One model thread: the model call releases the GIL in its numeric kernels, and one call at a
        # time is what makes batching happen instead of contention.
        self._inbox: SimpleQueue[tuple[list[Job], asyncio.AbstractEventLoop] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="model", daemon=True)
        self._thread.start()
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
        if not self._busy:
            self._send(loop)
        return await job.future

    # ------------------------------------------------------------------ on the event loop

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._take()
        self._busy = bool(batch)
        if batch:
            self._inbox.put((batch, loop))

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

    def _finish(self, outcomes: list[Outcome], loop: asyncio.AbstractEventLoop) -> None:
        for future, result, exc in outcomes:
            if future.done():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result or [])
        if not self._queue:
            self._busy = False
        elif self._max_wait and self._queued_rows < self._max_batch:
            loop.call_later(self._max_wait, self._send, loop)  # requests keep coming: let a batch fill
        else:
            self._send(loop)

    # ------------------------------------------------------------------ in the model thread

    def _serve(self) -> None:
        while (item := self._inbox.get()) is not None:
            batch, loop = item
            outcomes = self._call(batch)
            try:
                loop.call_soon_threadsafe(self._finish, outcomes, loop)
            except RuntimeError:  # the loop has closed: the server is gone, nobody is waiting
                return

    def _call(self, batch: list[Job]) -> list[Outcome]:
        """One call for the batch; on failure, one call per job to isolate the failing one."""
        self.batches += 1
        rows = [row for job in batch for row in job.rows]
        try:
            results = self._run(rows, batch[0].top_k)
        except Exception as batch_error:
            if len(batch) == 1:
                return [(batch[0].future, None, batch_error)]
            outcomes: list[Outcome] = []
            for job in batch:
                try:
                    outcomes.append((job.future, self._run(job.rows, job.top_k), None))
                except Exception as exc:
                    outcomes.append((job.future, None, exc))
            return outcomes
        outcomes = []
        start = 0
        for job in batch:
            end = start + len(job.rows)
            outcomes.append((job.future, results[start:end], None))
            start = end
        return outcomes

    def close(self) -> None:
        self._inbox.put(None)
