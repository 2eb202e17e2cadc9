"""Shadow traffic, from the live instance's side: copies of its answered ``POST /predict`` requests go
to a staged candidate, and each pair of answers is written down.

The controller asks for it by writing ``control.json`` in the shadow folder (``--shadow-dir``); every
instance looks at that file twice a second, and the one whose unix socket the file names as the
source mirrors. The copy is taken after the live answer has been sent, with a sampling share and a
rate cap applied first, and goes on a bounded queue that a few sender tasks drain over their own
connections to the candidate's socket. So the live answer never waits for the candidate: a candidate
that is slow, hangs or dies fills the queue, and what does not fit is counted as dropped.

Each pair becomes one JSON line in ``<records>`` (owner-only, bounded by ``max_records``): both labels
and top scores, both in-service times (the candidate reports its own in a response header, measured
the way the live instance measures itself), and the candidate's error if it had one. The first
``max_examples`` disagreements also carry the input, cut to a readable length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("switchyard.shadow")

CONTROL = "control.json"
SHADOW_HEADER = b"x-switchyard-shadow"
ELAPSED_HEADER = b"x-switchyard-elapsed-ms"
POLL_SECONDS = 0.5
FLUSH_SECONDS = 0.5
SENDERS = 4
QUEUE_SIZE = 256
EXAMPLE_CHARS = 240


@dataclass(frozen=True)
class Control:
    """What the controller asked for (``control.json``)."""

    source: str  # the live instance's unix socket: the one that mirrors
    target: str  # the candidate's unix socket
    records: str  # file name, in the shadow folder
    percent: float = 100.0
    rate: float = 100.0  # mirrored requests per second at most, for the whole instance
    timeout: float = 10.0
    max_records: int = 100_000
    max_examples: int = 20

    @classmethod
    def parse(cls, raw: bytes) -> Control:
        data = orjson.loads(raw)
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


@dataclass(slots=True)
class Copy:
    body: bytes
    request_id: bytes
    answer: bytes
    live_ms: float


class Mirror:
    def __init__(self, folder: Path, own_socket: str, workers: int = 1) -> None:
        self.folder = folder
        self.own_socket = own_socket
        self.share = 1.0 / workers  # each worker process mirrors its part of the rate
        self.control: Control | None = None
        self.active = False  # read on the hot path: one attribute, nothing else, while off
        self._seen: tuple[int, int] | None = None
        self._queue: asyncio.Queue[Copy] = asyncio.Queue(QUEUE_SIZE)
        self._tokens = 0.0
        self._refilled = 0.0
        self._lines: list[bytes] = []
        self._fd: int | None = None
        self._written = 0
        self._examples = 0
        self._dropped = 0
        self._tasks: list[asyncio.Task[None]] = []

    # ---------------------------------------------------------------- the hot path (after the answer)

    def offer(self, body: bytes, request_id: bytes, answer: bytes, live_ms: float) -> None:
        control = self.control
        if control is None or (control.percent < 100 and random.random() * 100 >= control.percent):
            return
        now = time.monotonic()
        rate = control.rate * self.share
        self._tokens = min(max(rate, 1.0), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            return
        self._tokens -= 1
        try:
            self._queue.put_nowait(Copy(body, request_id, answer, live_ms))
        except asyncio.QueueFull:
            self._dropped += 1

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Follow ``control.json`` until cancelled."""
        loop = asyncio.get_running_loop()
        next_flush = loop.time()
        try:
            while True:
                self._poll()
                if loop.time() >= next_flush:
                    self._flush()
                    next_flush = loop.time() + FLUSH_SECONDS
                await asyncio.sleep(POLL_SECONDS)
        finally:
            self._stop()

    def _poll(self) -> None:
        path = self.folder / CONTROL
        try:
            stat = path.stat()
            seen: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            seen = None
        if seen == self._seen:
            return
        self._seen = seen
        control = None
        if seen is not None:
            try:
                control = Control.parse(path.read_bytes())
            except (OSError, ValueError, TypeError) as exc:
                log.warning(f"shadow: ignoring an unreadable {path}: {exc}")
        if control is not None and control.source != self.own_socket:
            control = None
        if control != self.control:
            self._stop()
            if control is not None:
                self._start(control)

    def _start(self, control: Control) -> None:
        path = self.folder / control.records
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:  # the controller's warning says copying did not start; live goes on
            log.warning(f"shadow: cannot write {path}: {exc.strerror}; not mirroring")
            return
        self._written = self._examples = self._dropped = 0
        # A full bucket: a burst of one second's worth, then the rate.
        self._tokens, self._refilled = max(control.rate * self.share, 1.0), time.monotonic()
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._tasks = [asyncio.create_task(self._sender(control)) for _ in range(SENDERS)]
        self.control = control
        self.active = True
        log.info(f"shadow: mirroring {control.percent:g}% of /predict (at most {control.rate:g}/s) to {control.target}")

    def _stop(self) -> None:
        if self.control is not None:
            log.info(f"shadow: stopped mirroring to {self.control.target}")
        self.active = False
        self.control = None
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self._flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _flush(self) -> None:
        if self._dropped and self._fd is not None:
            self._lines.append(orjson.dumps({"t": time.time(), "dropped": self._dropped}))
            self._dropped = 0
        lines, self._lines = self._lines, []
        if lines and self._fd is not None:
            with contextlib.suppress(OSError):  # a full disk loses evidence, never a live answer
                os.write(self._fd, b"\n".join(lines) + b"\n")

    # ---------------------------------------------------------------- sending copies

    async def _sender(self, control: Control) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            copy = await self._queue.get()
            if self._written >= control.max_records:
                self.active = False  # enough evidence: stop taking copies
                continue
            started = time.perf_counter()
            error, status, answer, elapsed = None, 0, b"", None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_unix_connection(control.target), control.timeout)
                status, answer, elapsed, keep = await asyncio.wait_for(_exchange(conn, copy), control.timeout)
                if not keep:
                    conn[1].close()
                    conn = None
                if status != 200:
                    error = f"HTTP {status}"
            except TimeoutError:
                error = f"no answer in {control.timeout:g} s"
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                error = (
                    f"unreachable: {exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__}"
                )
            if error is not None and conn is not None:
                conn[1].close()
                conn = None
            if elapsed is None and error is None:
                elapsed = (time.perf_counter() - started) * 1000
            self._record(control, copy, answer if error is None else None, elapsed, error)
            if error is not None and error.startswith("unreachable"):
                await asyncio.sleep(0.2)  # a dead candidate: do not spin on connection attempts

    def _record(
        self, control: Control, copy: Copy, answer: bytes | None, cand_ms: float | None, error: str | None
    ) -> None:
        live_labels, live_top = _labels(copy.answer)
        record: dict[str, Any] = {
            "t": round(time.time(), 3),
            "id": copy.request_id.decode(errors="replace"),
            "live": live_labels,
            "live_top": live_top,
            "live_ms": round(copy.live_ms, 3),
            "cand": None,
            "cand_top": None,
            "cand_ms": None if cand_ms is None else round(cand_ms, 3),
            "error": error,
        }
        if answer is not None:
            try:
                record["cand"], record["cand_top"] = _labels(answer)
            except (ValueError, KeyError, TypeError):
                record["error"] = "unreadable answer"
        if record["cand"] is not None and record["cand"] != live_labels and self._examples < control.max_examples:
            self._examples += 1
            record["input"] = _input_text(copy.body)
        self._lines.append(orjson.dumps(record))
        self._written += 1


async def _exchange(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], copy: Copy
) -> tuple[int, bytes, float | None, bool]:
    reader, writer = conn
    writer.write(
        b"POST /predict HTTP/1.1\r\nhost: shadow\r\ncontent-type: application/json\r\n"
        b"x-switchyard-shadow: 1\r\nx-request-id: %s\r\ncontent-length: %d\r\n\r\n%s"
        % (copy.request_id, len(copy.body), copy.body)
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, elapsed, keep = 0, None, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == ELAPSED_HEADER:
            elapsed = float(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    return status, await reader.readexactly(length), elapsed, keep


def _labels(answer: bytes) -> tuple[list[str], list[float]]:
    predictions = orjson.loads(answer)["predictions"]
    return [p["label"] for p in predictions], [round(float(p["scores"][p["label"]]), 4) for p in predictions]


def _input_text(body: bytes) -> str:
    """The input of a disagreement, readable and short: the text of a one-field instance, else the JSON."""
    try:
        payload = orjson.loads(body)
        first = payload["instances"][0] if isinstance(payload, dict) and "instances" in payload else payload
        values = list(first.values()) if isinstance(first, dict) else []
        text = values[0] if len(values) == 1 and isinstance(values[0], str) else orjson.dumps(first).decode()
    except (ValueError, KeyError, IndexError, TypeError):
        text = body.decode(errors="replace")
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"
