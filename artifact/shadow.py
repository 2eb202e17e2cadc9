"""The shadow contract between the controller and a live instance, written out once for both sides.

The controller asks for copies by writing :class:`Control` as ``control.json`` in the shadow folder
(:mod:`controller.drivers.shadow`); the live instance it names as the source sends copies of its
answered requests to the candidate and writes each pair of answers back as one :class:`Record` line
in the records file the control names (:mod:`service.shadow`); the controller folds those lines into
evidence (:mod:`controller.core.evidence`). A copy carries :data:`SHADOW_HEADER`, so the candidate
counts it apart from live traffic, and the candidate answers with its own in-service time in
:data:`ELAPSED_HEADER`, measured the way the live instance measures itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import orjson

CONTROL = "control.json"
SHADOW_HEADER = b"x-switchyard-shadow"
ELAPSED_HEADER = b"x-switchyard-elapsed-ms"


@dataclass(frozen=True)
class Control:
    """What the controller asks for."""

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
        """Raises ValueError or TypeError on a file that is not a control (the reader ignores it)."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls(**{field.name: data[field.name] for field in fields(cls) if field.name in data})

    def dump(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Record:
    """One copy: both answers (labels and top scores, a row each), both in-service times, and the
    candidate's error if it gave no readable 200. ``input`` is kept for the first disagreements."""

    t: float  # wall clock, when the pair was written
    id: str  # the request id live answered with
    live: list[str]
    live_top: list[float]
    live_ms: float
    cand: list[str] | None = None
    cand_top: list[float] | None = None
    cand_ms: float | None = None
    error: str | None = None
    input: str | None = None

    def line(self) -> bytes:
        data = asdict(self)
        if self.input is None:
            del data["input"]
        return orjson.dumps(data)


def dropped_line(t: float, count: int) -> bytes:
    """Copies that did not fit on the queue to the candidate since the last line of this kind."""
    return orjson.dumps({"t": t, "dropped": count})


def parse_line(line: bytes) -> Record | int | None:
    """A record, a count of dropped copies, or None for a line that is neither (one cut short by a
    killed instance, or not ours): the reader skips it."""
    try:
        data = orjson.loads(line)
        if not isinstance(data, dict):
            return None
        if "dropped" in data:
            return int(data["dropped"])
        record = Record(**data)
    except (ValueError, TypeError):
        return None
    return record if _well_formed(record) else None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _labels(labels: object, scores: object) -> bool:
    return (
        isinstance(labels, list)
        and isinstance(scores, list)
        and len(labels) == len(scores)
        and all(isinstance(label, str) for label in labels)
        and all(_number(score) for score in scores)
    )


def _well_formed(record: Record) -> bool:
    """The types the evidence relies on: the records file is written by another process (in Docker,
    another user), so a line of the wrong shape is skipped rather than trusted."""
    answered = record.cand is not None
    return (
        _number(record.t)
        and isinstance(record.id, str)
        and _labels(record.live, record.live_top)
        and _number(record.live_ms)
        and (not answered or (_labels(record.cand, record.cand_top) and _number(record.cand_ms)))
        and (record.error is None or isinstance(record.error, str))
        and (record.input is None or isinstance(record.input, str))
        and (answered or record.error is not None)
    )
