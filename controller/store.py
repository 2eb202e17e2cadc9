"""The facts and the history, stored in SQLite: each transition writes the new facts and its history
lines in one transaction, so a crash leaves the old facts or the new ones, never a mix."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.facts import Event, Facts, decode, encode

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


class SqliteStore:
    """Facts and history in one SQLite file (WAL, synchronous=FULL): a transition is one transaction."""

    def __init__(self, path: Path, now: Callable[[], float] = time.time, actor: str = "") -> None:
        self.now = now
        self.actor = actor  # who acts through this store: every history line it writes names them
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        if "actor" not in {row[1] for row in self.db.execute("PRAGMA table_info(history)")}:
            self.db.execute("ALTER TABLE history ADD COLUMN actor TEXT NOT NULL DEFAULT ''")  # older state files

    def load(self) -> Facts:
        row = self.db.execute("SELECT body FROM facts WHERE id = 1").fetchone()
        return decode(row[0]) if row else Facts()

    def save(self, facts: Facts, *events: Event) -> None:
        """Write the new facts and their history lines in one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT OR REPLACE INTO facts (id, body) VALUES (1, ?)", (encode(facts),))
            for event in events:
                self._insert(event)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def record(self, event: Event) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self._insert(event)
        self.db.execute("COMMIT")

    def _insert(self, event: Event) -> None:
        self.db.execute(
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
        rows = [dict(zip(COLUMNS, row, strict=True)) for row in self.db.execute(query)]
        for row in rows:
            row["forced"] = bool(row["forced"])
        return rows[::-1]
