"""The facts and the history, stored in SQLite: each transition writes the new facts and its history
lines in one transaction, so a crash leaves the old facts or the new ones, never a mix."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.core.facts import Event, Facts, decode, encode
from controller.errors import StateError
from controller.vocabulary import Verb

SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER,
    step TEXT,
    reason TEXT NOT NULL,
    forced INTEGER NOT NULL,
    actor TEXT NOT NULL DEFAULT ''
);
"""
COLUMNS = ["at", "action", "outcome", "from_version", "to_version", "step", "reason", "forced", "actor"]


CORRUPT = ("file is not a database", "malformed", "not a database")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _full(folder: Path) -> bool:
    """SQLite reports a full disk as a "disk I/O error"; the filesystem says which it is."""
    try:
        found = os.statvfs(folder)
    except OSError:
        return False
    return found.f_bavail * found.f_frsize < 256 * 1024


def problem(exc: BaseException, path: Path) -> str:
    """What is wrong with the state file, and what to do, in one line."""
    text = str(exc)
    if "readonly" in text or "read-only" in text or "Read-only" in text or _read_only(path.parent):
        return f"cannot write the state in {path.parent}: it is read-only; make it writable and run the command again"
    if "full" in text or "No space" in text or _full(path.parent):
        return f"cannot write the state {path}: the disk is full; free some space and run the command again"
    return f"the state {path} cannot be used ({text}); check the run dir's permissions and free space"


class SqliteStore:
    """Facts and history in one SQLite file (WAL, synchronous=FULL): a transition is one transaction.

    The file is opened at first use. One that is not a database any more (overwritten, truncated) is
    moved aside, and a new one starts with a history line saying so: the old history is lost, and
    what still runs is reported by ``status`` and stopped by ``down``. Every other SQLite or OS error
    becomes a :class:`StateError` with one line saying what is wrong and what to do.
    """

    def __init__(self, path: Path, now: Callable[[], float] = time.time, actor: str = "") -> None:
        self.path = path
        self.now = now
        self.actor = actor  # who acts through this store: every history line it writes names them
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as exc:
                if not any(words in str(exc) for words in CORRUPT):
                    raise StateError(problem(exc, self.path)) from None
                self._db = self._replace_corrupt(exc)
            except OSError as exc:
                raise StateError(problem(exc, self.path)) from None
        return self._db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            if "actor" not in {row[1] for row in db.execute("PRAGMA table_info(history)")}:
                db.execute("ALTER TABLE history ADD COLUMN actor TEXT NOT NULL DEFAULT ''")  # older state files
        except BaseException:
            db.close()
            raise
        return db

    def _replace_corrupt(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self.now())}")
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._open()
        except (OSError, sqlite3.Error) as again:
            raise StateError(problem(again, self.path)) from None
        reason = (
            f"the state file was unreadable ({exc}) and was moved aside to {aside.name}; the old history is "
            "lost; what still runs is reported by status and stopped by down"
        )
        self.record(Event(Verb.REPAIR, "repaired", reason=reason))
        return self._db

    def _guarded(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return work(self.db)
        except sqlite3.Error as exc:
            raise StateError(problem(exc, self.path)) from None

    def load(self) -> Facts:
        row = self._guarded(lambda db: db.execute("SELECT body FROM facts WHERE id = 1").fetchone())
        return decode(row[0]) if row else Facts()

    def save(self, facts: Facts, *events: Event) -> None:
        """Write the new facts and their history lines in one transaction."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO facts (id, body) VALUES (1, ?)", (encode(facts),))
                for event in events:
                    self._insert(db, event)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        self._guarded(write)

    def record(self, event: Event) -> None:
        """One history line on its own; the facts are not read or written, so a process that holds no
        deployment lock (the keeper) can record without racing a command's save."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._insert(db, event)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        self._guarded(write)

    def _insert(self, db: sqlite3.Connection, event: Event) -> None:
        db.execute(
            f"INSERT INTO history ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            (
                datetime.fromtimestamp(self.now(), UTC).isoformat(timespec="milliseconds"),
                event.action,
                event.outcome,
                event.from_version,
                event.to_version,
                event.step,
                event.reason,
                int(event.forced),
                self.actor,
            ),
        )

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        query = f"SELECT {', '.join(COLUMNS)} FROM history ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        found = self._guarded(lambda db: db.execute(query).fetchall())
        rows = [dict(zip(COLUMNS, row, strict=True)) for row in found]
        for row in rows:
            row["forced"] = bool(row["forced"])
        return rows[::-1]
