"""The live instance's side of the prediction log (:mod:`artifact.predlog`): every answer of
``POST /predict``, live or a shadow copy, is recorded off the request path.

The event loop only appends a tuple to a bounded list after the answer has been sent; a writer
thread takes the list every :data:`~artifact.predlog.FLUSH_SECONDS`, computes the digests and
commits the batch in one transaction. What does not fit (a disk that stalls) is counted as dropped,
never waited for. Retention runs in the same thread, every :data:`PRUNE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from artifact import predlog
from service.predictor import Row

log = logging.getLogger("switchyard.predlog")

MAX_PENDING = 50_000  # answers waiting for the writer; more are dropped and counted
PRUNE_SECONDS = 30.0


@dataclass(frozen=True)
class Where:
    """Who answers: the deployment's model and version, and the slot it runs in."""

    model: str
    version: int
    slot: str


class PredictionLog:
    def __init__(
        self, path: Path, where: Where, *, inputs: bool = True, max_age: float = 7 * 86400, max_rows: int = 1_000_000
    ) -> None:
        self.path = path
        self.where = where
        self.inputs = inputs
        self.max_age = max_age
        self.max_rows = max_rows
        self.dropped = 0
        self._pending: list[tuple[float, bytes, list[Row], list[tuple[str, float]], bool]] = []
        self._size = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- the hot path (after the answer)

    def record(self, request_id: bytes, rows: list[Row], answers: list[tuple[str, float]], shadow: bool) -> None:
        if self._size + len(rows) > MAX_PENDING:
            self.dropped += len(rows)
            return
        with self._lock:
            self._pending.append((time.time(), request_id, rows, answers, shadow))
            self._size += len(rows)

    # ---------------------------------------------------------------- the writer thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is pending and stop (on a clean shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        try:
            conn = predlog.connect(self.path)
        except Exception as exc:  # a link, another user's file, a full disk: serving goes on, unlogged
            log.error(f"the prediction log {self.path} cannot be opened: {exc}; answers are not logged")
            return
        pruned = time.monotonic()
        while True:
            stopping = self._stop.wait(predlog.FLUSH_SECONDS)
            try:
                self._flush(conn)
                if time.monotonic() - pruned >= PRUNE_SECONDS:
                    predlog.prune(conn, max_age=self.max_age, max_rows=self.max_rows)
                    pruned = time.monotonic()
            except Exception as exc:  # a full or locked disk must not end the logging for good
                log.warning(f"the prediction log could not be written: {exc}")
            if stopping:
                conn.close()
                return

    def _flush(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            pending, self._pending, self._size = self._pending, [], 0
        if not pending:
            return
        where, rows = self.where, []
        for at, request_id, inputs, answers, shadow in pending:
            rid = request_id.decode(errors="replace")
            for index, (row, (label, score)) in enumerate(zip(inputs, answers, strict=True)):
                text = row if isinstance(row, str) else orjson.dumps(row).decode()
                digest = hashlib.sha256(text.encode()).hexdigest()
                key = rid if len(inputs) == 1 else f"{rid}/{index}"
                kept = text if self.inputs else None
                size = len(row) if isinstance(row, str) else None
                rows.append(
                    (key, at, where.model, where.version, where.slot, int(shadow), kept, digest, label, score, size)
                )
        predlog.write(conn, rows)
