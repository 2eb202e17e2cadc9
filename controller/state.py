"""The controller's state: facts in SQLite, written whole in one transaction per transition.

Stored facts: which color is active (live), which is staged, which is the previous (rollback target),
each slot's instance (version, handle, port, socket), the router, and the operation in flight with the
step it reached. The phase is never stored: :mod:`controller.phase` derives it from these facts and
from what is observed.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def other(color: str) -> str:
    return "green" if color == "blue" else "blue"


@dataclass(frozen=True)
class Instance:
    """One running service instance: what a slot holds, or what an operation is starting."""

    color: str
    version: int
    handle: str  # a pid, or a container id
    port: int  # the preview / health address: http://127.0.0.1:<port>
    socket: str  # the router's upstream: a unix socket path
    sha256: str
    started_at: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Op:
    """An operation in flight. Left behind only by a controller that died; the next command repairs it."""

    action: str  # stage | promote | rollback | up
    color: str
    version: int
    step: str  # start | ready | smoke | gate | flip
    candidate: Instance | None = None
    forced: bool = False


@dataclass(frozen=True)
class Router:
    kind: str  # nginx | builtin | docker-nginx
    host: str
    port: int
    handle: str  # pid or container id
    admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Facts:
    name: str | None = None
    active: str | None = None
    staged: str | None = None
    previous: str | None = None
    slots: dict[str, Instance] = field(default_factory=dict)
    router: Router | None = None
    op: Op | None = None

    def replace(self, **changes: Any) -> Facts:
        return dataclasses.replace(self, **changes)

    def slot(self, color: str | None) -> Instance | None:
        return self.slots.get(color) if color else None


@dataclass(frozen=True)
class Event:
    action: str
    outcome: str  # ok | failed | refused | repaired
    from_version: int | None = None
    to_version: int | None = None
    step: str | None = None
    reason: str = ""
    forced: bool = False


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
    forced INTEGER NOT NULL
);
"""


def _encode(facts: Facts) -> str:
    return json.dumps(dataclasses.asdict(facts))


def _decode(body: str) -> Facts:
    raw = json.loads(body)
    slots = {color: Instance(**slot) for color, slot in raw["slots"].items()}
    router = Router(**raw["router"]) if raw["router"] else None
    op = None
    if raw["op"]:
        op_raw = dict(raw["op"])
        candidate = op_raw.pop("candidate")
        op = Op(**op_raw, candidate=Instance(**candidate) if candidate else None)
    return Facts(
        name=raw["name"],
        active=raw["active"],
        staged=raw["staged"],
        previous=raw["previous"],
        slots=slots,
        router=router,
        op=op,
    )


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def load(self) -> Facts:
        row = self.db.execute("SELECT body FROM facts WHERE id = 1").fetchone()
        return _decode(row[0]) if row else Facts()

    def save(self, facts: Facts, *events: Event) -> None:
        """Write the new facts and their history lines in one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT OR REPLACE INTO facts (id, body) VALUES (1, ?)", (_encode(facts),))
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
            "INSERT INTO history (at, action, outcome, from_version, to_version, step, reason, forced)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                datetime.now(UTC).isoformat(timespec="milliseconds"),
                event.action,
                event.outcome,
                event.from_version,
                event.to_version,
                event.step,
                event.reason,
                int(event.forced),
            ),
        )

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        query = "SELECT at, action, outcome, from_version, to_version, step, reason, forced FROM history"
        query += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        columns = ["at", "action", "outcome", "from_version", "to_version", "step", "reason", "forced"]
        rows = [dict(zip(columns, row, strict=True)) for row in self.db.execute(query)]
        for row in rows:
            row["forced"] = bool(row["forced"])
        return rows[::-1]
