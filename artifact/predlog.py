"""The prediction log and its feedback, written out once for both sides: a live instance records
every answer (:mod:`service.predlog`), the product sends the true labels later by request id
(``POST /feedback`` on the service, ``release feedback import`` in the controller), and the
controller reads each version's live quality from the two together.

One SQLite file per deployment, in the controller's private run folder. SQLite in WAL mode with
``synchronous=NORMAL``: a committed batch survives a killed process, and a process killed
mid-commit leaves the file as it was before that batch (never a corrupt log). Each instance commits
its answers in batches at most :data:`FLUSH_SECONDS` apart, so a killed instance loses at most its
last second.

A request of one instance is logged under its request id; a request of several under
``ID/0``, ``ID/1``, ... so that each can be labelled. Retention is by age and by row count;
the ids of rows it removes are remembered (``forgotten``) for as long again, so feedback that
comes late is stored and reported as arriving after its prediction was dropped, not refused as
unknown.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

FLUSH_SECONDS = 0.5
CHECK_HEADER = b"x-switchyard-check"  # the controller's own checks (smoke, speed) carry it: never logged
MAX_ID = 128  # characters of a request id; the service cuts X-Request-ID to this too
MAX_LABEL = 200

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL, at REAL NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
    slot TEXT NOT NULL, shadow INTEGER NOT NULL, input TEXT, digest TEXT NOT NULL,
    label TEXT NOT NULL, score REAL NOT NULL, length INTEGER
);
CREATE INDEX IF NOT EXISTS predictions_by_id ON predictions (request_id);
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (at);
CREATE TABLE IF NOT EXISTS feedback (request_id TEXT PRIMARY KEY, label TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS forgotten (request_id TEXT PRIMARY KEY, at REAL NOT NULL);
"""

Prediction = tuple[str, float, str, int, str, int, str | None, str, str, float, int | None]


class FeedbackRefused(ValueError):
    """Feedback that is refused whole: nothing of it was stored."""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open (creating it owner-only) the log at ``path``; a link or another user's file is refused.
    ``readonly``: only read an existing log (a reader must work on a read-only or full disk)."""
    if not readonly:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a file of this user's (a link, or someone else's): refusing to use it")
    if readonly:
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def write(conn: sqlite3.Connection, rows: Sequence[Prediction]) -> None:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)


def prune(conn: sqlite3.Connection, *, max_age: float, max_rows: int, now: float | None = None) -> int:
    """Drop predictions older than ``max_age`` seconds, then the oldest beyond ``max_rows``; their
    ids are remembered for ``max_age`` more. Returns how many rows went."""
    now = time.time() if now is None else now
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        cutoff = now - max_age
        (count,) = conn.execute("SELECT count(*) FROM predictions").fetchone()
        if count > max_rows:
            (oldest_kept,) = conn.execute(
                "SELECT at FROM predictions ORDER BY at DESC LIMIT 1 OFFSET ?", (max_rows - 1,)
            ).fetchone()
            cutoff = max(cutoff, oldest_kept)
        conn.execute(
            "INSERT OR REPLACE INTO forgotten SELECT request_id, ? FROM predictions WHERE at < ?", (now, cutoff)
        )
        gone = conn.execute("DELETE FROM predictions WHERE at < ?", (cutoff,)).rowcount
        conn.execute("DELETE FROM forgotten WHERE at < ?", (now - max_age,))
        return int(gone)


@dataclass(frozen=True)
class Stored:
    stored: int  # labels written
    replaced: int  # of which replaced an earlier label for the same id
    late: int  # of which came after retention had dropped the prediction


def add_feedback(
    conn: sqlite3.Connection, labels: Iterable[tuple[str, str]], known: set[str] | None, now: float | None = None
) -> Stored:
    """Store ``(request_id, label)`` pairs, all or none: an id the log never had, a label outside
    ``known`` or a malformed pair refuses the whole batch, naming the first few. A second label for
    an id replaces the first (the last one in a batch wins)."""
    now = time.time() if now is None else now
    pairs: dict[str, str] = {}
    problems: list[str] = []
    for index, (request_id, label) in enumerate(labels):
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID:
            problems.append(f"item {index}: request_id must be text of 1 to {MAX_ID} characters")
        elif not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL:
            problems.append(f"item {index}: label must be text of 1 to {MAX_LABEL} characters")
        elif known is not None and label not in known:
            problems.append(f"item {index}: unknown label {label!r}")
        else:
            pairs[request_id] = label
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        ids = list(pairs)
        logged, late, replaced = (_present(conn, table, ids) for table in ("predictions", "forgotten", "feedback"))
        problems += [
            f"unknown request_id {r!r}: no prediction was logged under it" for r in ids if r not in logged | late
        ]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise FeedbackRefused("; ".join(problems[:3]) + more + "; nothing was stored")
        conn.executemany("INSERT OR REPLACE INTO feedback VALUES (?,?,?)", [(r, pairs[r], now) for r in ids])
    return Stored(len(ids), len(replaced), len(late - logged))


def _present(conn: sqlite3.Connection, table: str, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = f"SELECT request_id FROM {table} WHERE request_id IN ({','.join('?' * len(chunk))})"
        found.update(r for (r,) in conn.execute(query, chunk))
    return found


@dataclass(frozen=True)
class Quality:
    """One version in one slot, live or shadow, over a window."""

    model: str
    version: int
    slot: str
    shadow: bool
    answered: int
    labelled: int
    correct: int
    macro_f1: float | None
    estimate: float  # the mean top score: the accuracy a calibrated model expects of itself

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def quality(conn: sqlite3.Connection, since: float = 0.0) -> list[Quality]:
    """Each (version, slot, live or shadow)'s answers since ``since`` and how many of the labelled were right."""
    found = []
    groups = conn.execute(
        "SELECT model, version, slot, shadow, count(*), avg(score) FROM predictions WHERE at >= ? "
        "GROUP BY model, version, slot, shadow ORDER BY min(at)",
        (since,),
    ).fetchall()
    for model, version, slot, shadow, answered, estimate in groups:
        pairs = conn.execute(
            "SELECT p.label, f.label FROM predictions p JOIN feedback f USING (request_id) "
            "WHERE p.at >= ? AND p.model = ? AND p.version = ? AND p.slot = ? AND p.shadow = ?",
            (since, model, version, slot, shadow),
        ).fetchall()
        correct = sum(predicted == truth for predicted, truth in pairs)
        found.append(
            Quality(model, version, slot, bool(shadow), answered, len(pairs), correct, macro_f1(pairs), estimate)
        )
    return found


def paired(
    conn: sqlite3.Connection, candidate: tuple[int, str], live: tuple[int, str], since: float = 0.0
) -> list[tuple[bool, bool]]:
    """(candidate right, live right) on each labelled request both answered: the candidate's shadow
    answer against the live one, on exactly the same requests."""
    rows = conn.execute(
        "SELECT c.label = f.label, l.label = f.label FROM predictions c "
        "JOIN predictions l ON l.request_id = c.request_id AND l.shadow = 0 AND l.version = ? AND l.slot = ? "
        "JOIN feedback f ON f.request_id = c.request_id "
        "WHERE c.shadow = 1 AND c.version = ? AND c.slot = ? AND c.at >= ?",
        (live[0], live[1], candidate[0], candidate[1], since),
    ).fetchall()
    return [(bool(a), bool(b)) for a, b in rows]


@dataclass(frozen=True)
class Inputs:
    """One version's live answers in a window: how their inputs and labels compare with training."""

    answered: int
    measured: int  # with a length (text inputs)
    outside: int  # of which outside the training lengths
    labels: dict[str, int]


def inputs(conn: sqlite3.Connection, version: int, length: tuple[int, int] | None, since: float = 0.0) -> Inputs:
    """Live (not shadow) answers of ``version`` since ``since``: label counts, and how many inputs fall
    outside ``length`` (the training inputs' 1st to 99th percentile)."""
    labels = dict(
        conn.execute(
            "SELECT label, count(*) FROM predictions WHERE version = ? AND shadow = 0 AND at >= ? GROUP BY label",
            (version, since),
        ).fetchall()
    )
    low, high = length if length else (0, 1 << 62)
    measured, outside = conn.execute(
        "SELECT count(length), coalesce(sum(length < ? OR length > ?), 0) FROM predictions "
        "WHERE version = ? AND shadow = 0 AND at >= ? AND length IS NOT NULL",
        (low, high, version, since),
    ).fetchone()
    return Inputs(sum(labels.values()), int(measured), int(outside), labels)


def labelled(conn: sqlite3.Connection, since: float = 0.0) -> list[tuple[str, str, str, float]]:
    """``(input, true label, digest, time)`` of each live answer labelled since ``since`` whose input was
    kept, once per distinct input: when the same input was labelled more than once, the latest label
    wins (a correction overrides what came before)."""
    rows = conn.execute(
        "SELECT p.input, f.label, p.digest, p.at FROM predictions p JOIN feedback f USING (request_id) "
        "WHERE p.shadow = 0 AND p.input IS NOT NULL AND p.at >= ? ORDER BY f.at, p.at",
        (since,),
    ).fetchall()
    latest = {digest: (text, label, digest, at) for text, label, digest, at in rows}
    return sorted(latest.values(), key=lambda row: row[3])


def macro_f1(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Macro-F1 over the labels that occur as truth or prediction in ``(predicted, truth)`` pairs."""
    if not pairs:
        return None
    labels = {label for pair in pairs for label in pair}
    scores = []
    for label in labels:
        tp = sum(p == label and t == label for p, t in pairs)
        predicted = sum(p == label for p, _ in pairs)
        actual = sum(t == label for _, t in pairs)
        scores.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return sum(scores) / len(scores)
