"""The micro-batcher in process, on a model function the test controls: requests share model calls,
each gets its own rows back, a failing row is isolated to its request, and an overfull queue is
refused rather than grown."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from service.batching import MicroBatcher
from service.errors import Overloaded


def doubling(calls: list[list[Any]], gate: threading.Event | None = None) -> Any:
    def run(rows: list[Any]) -> list[list[float]]:
        if gate is not None:
            gate.wait(10)
        calls.append(list(rows))
        if any(row == "boom" for row in rows):
            raise RuntimeError("the model failed")
        return [[float(row) * 2] for row in rows]

    return run


def run_async(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_concurrent_requests_share_a_model_call_and_each_gets_its_own_rows() -> None:
    calls: list[list[Any]] = []
    gate = threading.Event()
    batcher = MicroBatcher(doubling(calls, gate), max_batch_size=64, max_wait_ms=0, max_queue_rows=1000)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit([1], lambda p: p))  # takes the model thread
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit([i, i + 100], lambda p: p)) for i in range(2, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        answers = await asyncio.gather(first, *rest)
        batcher.close()
        return answers

    answers = run_async(scenario())
    assert answers[0] == [[2.0]]
    assert answers[1:] == [[[i * 2.0], [(i + 100) * 2.0]] for i in range(2, 6)]
    assert calls[0] == [1] and len(calls) == 2, calls  # the four waiting requests went in one call
    assert batcher.batches == 2


def test_a_row_the_model_fails_on_fails_only_its_own_request() -> None:
    calls: list[list[Any]] = []
    gate = threading.Event()
    batcher = MicroBatcher(doubling(calls, gate), max_batch_size=64, max_wait_ms=0, max_queue_rows=1000)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit([1], lambda p: p))
        await asyncio.sleep(0.05)
        good = asyncio.ensure_future(batcher.submit([3], lambda p: p))
        bad = asyncio.ensure_future(batcher.submit(["boom"], lambda p: p))
        await asyncio.sleep(0.05)
        gate.set()
        outcomes = await asyncio.gather(first, good, bad, return_exceptions=True)
        batcher.close()
        return outcomes

    first, good, bad = run_async(scenario())
    assert first == [[2.0]] and good == [[6.0]]
    assert isinstance(bad, RuntimeError)


def test_an_overfull_queue_is_refused_with_retry_after() -> None:
    gate = threading.Event()
    batcher = MicroBatcher(doubling([], gate), max_batch_size=4, max_wait_ms=0, max_queue_rows=8)

    async def scenario() -> None:
        held = [asyncio.ensure_future(batcher.submit([1, 2, 3, 4], lambda p: p)) for _ in range(3)]
        await asyncio.sleep(0.05)  # the first is with the model; 8 rows wait
        with pytest.raises(Overloaded) as refused:
            await batcher.submit([5], lambda p: p)
        assert refused.value.headers == {"Retry-After": "1"}
        gate.set()
        await asyncio.gather(*held)
        batcher.close()

    run_async(scenario())
