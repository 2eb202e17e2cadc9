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
import errno
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import h11
import orjson

from artifact.shadow import CONTROL, ELAPSED_HEADER, SHADOW_HEADER, Control, Record, dropped_line

log = logging.getLogger("switchyard.shadow")

POLL_SECONDS = 0.5
FLUSH_SECONDS = 0.5
SENDERS = 4
QUEUE_SIZE = 256
EXAMPLE_CHARS = 240
MAX_ANSWER = 1 << 20  # a candidate's answer to one copy; more is an error, not a record


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
            self._lines.append(dropped_line(time.time(), self._dropped))
            self._dropped = 0
        lines, self._lines = self._lines, []
        if lines and self._fd is not None:
            with contextlib.suppress(OSError):  # a full disk loses evidence, never a live answer
                os.write(self._fd, b"\n".join(lines) + b"\n")

    # ---------------------------------------------------------------- sending copies

    async def _sender(self, control: Control) -> None:
        conn: _Candidate | None = None
        while True:
            copy = await self._queue.get()
            if self._written >= control.max_records:
                self.active = False  # enough evidence: stop taking copies
                continue
            started = time.perf_counter()
            error: str | None = None
            status, answer = 0, b""
            elapsed: float | None = None
            try:
                conn, (status, answer, elapsed) = await asyncio.wait_for(
                    _exchange(conn, control, copy), control.timeout
                )
                if status != 200:
                    error = f"HTTP {status}"
            except TimeoutError:
                error = f"no answer in {control.timeout:g} s"
            except OSError as exc:
                error = f"unreachable: {exc.strerror or type(exc).__name__}"
            except (ValueError, h11.ProtocolError) as exc:  # not HTTP, or an answer past the cap
                error = f"bad answer: {exc}"
            if error is not None and conn is not None:
                conn.close()
                conn = None
            if elapsed is None and error is None:
                elapsed = (time.perf_counter() - started) * 1000
            self._record(control, copy, answer if error is None else None, elapsed, error)
            if error is not None and error.startswith("unreachable"):
                await asyncio.sleep(0.2)  # a dead candidate: do not spin on connection attempts

    def _record(
        self, control: Control, copy: Copy, answer: bytes | None, cand_ms: float | None, error: str | None
    ) -> None:
        live, live_top = _labels(copy.answer)
        cand = cand_top = None
        if answer is not None:
            try:
                cand, cand_top = _labels(answer)
            except (ValueError, KeyError, TypeError):
                error = "unreadable answer"
        example = None
        if cand is not None and cand != live and self._examples < control.max_examples:
            self._examples += 1
            example = _input_text(copy.body)
        record = Record(
            t=round(time.time(), 3),
            id=copy.request_id.decode(errors="replace"),
            live=live,
            live_top=live_top,
            live_ms=round(copy.live_ms, 3),
            cand=cand,
            cand_top=cand_top,
            cand_ms=None if cand_ms is None else round(cand_ms, 3),
            error=error,
            input=example,
        )
        self._lines.append(record.line())
        self._written += 1


async def _exchange(
    conn: _Candidate | None, control: Control, copy: Copy
) -> tuple[_Candidate | None, tuple[int, bytes, float | None]]:
    """One copy asked of the candidate, on ``conn`` or a new connection: the connection to keep for
    the next copy (None if the candidate closes it) and the candidate's status, answer and own time.
    A kept connection the candidate closed while idle (its keep-alive timeout) is not an error of the
    candidate: the copy is asked once more on a new connection."""
    if conn is not None:
        try:
            found = await conn.ask(copy)
            return (conn if conn.reusable else None), found
        except _ClosedIdle:
            conn.close()
    conn = await _Candidate.open(control.target)
    try:
        found = await conn.ask(copy)
    except BaseException:  # an error or the deadline: the caller never sees this connection
        conn.close()
        raise
    return (conn if conn.reusable else None), found


class _ClosedIdle(ConnectionResetError):
    """The candidate closed a kept-alive connection before any byte of this copy's answer."""


class _Candidate:
    """One keep-alive connection to the candidate's socket, spoken through h11 (the HTTP/1.1 protocol
    implementation under httpx): chunked answers, framing and header limits are its business, while
    the socket and its deadline stay ours, so a copy costs the live process no client pool."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=16 * 1024)
        self.answered = 0  # answers read on this connection
        self.received = False  # any byte of the current copy's answer
        self.reusable = True

    @classmethod
    async def open(cls, path: str) -> _Candidate:
        return cls(*await asyncio.open_unix_connection(path))

    def close(self) -> None:
        self.writer.close()

    async def ask(self, copy: Copy) -> tuple[int, bytes, float | None]:
        """The candidate's status, answer and own time for one copy; ``reusable`` says afterwards
        whether the connection can carry the next one."""
        self.received = False
        try:
            found = await self._ask(copy)
        except ConnectionError as exc:
            self.reusable = False
            if self.answered and not self.received:
                raise _ClosedIdle(errno.ECONNRESET, "closed while idle") from exc
            raise
        self.answered += 1
        self.reusable = self.http.our_state is h11.DONE and self.http.their_state is h11.DONE
        if self.reusable:
            self.http.start_next_cycle()
        return found

    async def _ask(self, copy: Copy) -> tuple[int, bytes, float | None]:
        headers = [
            (b"host", b"shadow"),
            (b"content-type", b"application/json"),
            (SHADOW_HEADER, b"1"),
            (b"x-request-id", copy.request_id),
            (b"content-length", b"%d" % len(copy.body)),
        ]
        http = self.http
        self.writer.write(
            http.send(h11.Request(method="POST", target="/predict", headers=headers))
            + http.send(h11.Data(data=copy.body))
            + http.send(h11.EndOfMessage())
        )
        await self.writer.drain()
        status, elapsed, answer = 0, None, bytearray()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                if not data:  # the candidate closed the connection (or died) before a whole answer
                    raise ConnectionResetError(errno.ECONNRESET, "connection closed before the answer")
                self.received = True
                http.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                elapsed = next((float(v) for k, v in event.headers if k == ELAPSED_HEADER), None)
            elif isinstance(event, h11.Data):
                answer += event.data
                if len(answer) > MAX_ANSWER:
                    raise ValueError("answer too large")
            elif isinstance(event, h11.EndOfMessage):
                return status, bytes(answer), elapsed
            else:  # h11.ConnectionClosed: the answer ended with the connection
                raise ConnectionResetError(errno.ECONNRESET, "connection closed before the answer")


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
