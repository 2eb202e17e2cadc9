"""The deployment's prediction log and its feedback, on the controller's side: where the file and the
feedback token live, what the instances are told, importing labels from a CSV, and reading each
version's live quality (:mod:`artifact.predlog` is the format both sides share)."""

from __future__ import annotations

import contextlib
import csv
import io
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from artifact import predlog
from artifact.safeio import UnsafeFile, read_capped, write_private
from controller.errors import NeedsOperator, UsageError
from controller.settings import ControllerSettings

T = TypeVar("T")
LOG = "predictions.sqlite"
TOKEN = "feedback.token"
MAX_CSV_BYTES = 200 * 1024 * 1024


def path(settings: ControllerSettings) -> Path:
    return settings.run_dir / LOG


def token_file(settings: ControllerSettings) -> Path:
    """The bearer token ``POST /feedback`` wants, made on first use (owner-only, in the private run dir)."""
    file = settings.run_dir / TOKEN
    with contextlib.suppress(FileExistsError):
        write_private(file, secrets.token_urlsafe(32).encode() + b"\n")
    return file


def token(settings: ControllerSettings) -> str:
    try:
        return read_capped(token_file(settings), 4096).decode().strip()
    except (OSError, UnsafeFile) as exc:
        raise NeedsOperator(f"the feedback token cannot be read: {exc}") from None


def instance_args(settings: ControllerSettings, color: str) -> list[str]:
    """What a service instance is told about the log (nothing when the deployment turned it off)."""
    if not settings.prediction_log:
        return []
    return [
        "--prediction-log",
        str(path(settings).resolve()),
        "--slot",
        color,
        "--feedback-token-file",
        str(token_file(settings).resolve()),
        "--log-inputs" if settings.log_inputs else "--no-log-inputs",
        "--log-max-age-days",
        f"{settings.log_max_age_days:g}",
        "--log-max-rows",
        str(settings.log_max_rows),
    ]


@contextlib.contextmanager
def opened(settings: ControllerSettings, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    try:
        conn = predlog.connect(path(settings), readonly=readonly)
    except (OSError, sqlite3.Error) as exc:
        raise NeedsOperator(f"the prediction log {path(settings)} cannot be opened: {exc}") from None
    try:
        yield conn
    finally:
        conn.close()


def read_csv(file: Path) -> list[tuple[str, str]]:
    """``request_id,label`` rows (a header row names the columns; others are ignored). A bad row is a
    UsageError naming its line, before anything is stored."""
    try:
        text = read_capped(file, MAX_CSV_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{file} does not exist") from None
    except (OSError, UnsafeFile, UnicodeDecodeError) as exc:
        raise UsageError(f"{file} cannot be read as UTF-8 text: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"request_id", "label"} <= set(reader.fieldnames):
        raise UsageError(f"{file} needs a header row with the columns request_id and label")
    pairs, bad = [], []
    for row in reader:
        request_id, label = (row.get("request_id") or "").strip(), (row.get("label") or "").strip()
        if not request_id or not label:
            bad.append(f"line {reader.line_num}: request_id and label must both be given")
        else:
            pairs.append((request_id, label))
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UsageError(f"{file}: " + "; ".join(bad[:3]) + more + "; nothing was imported")
    if not pairs:
        raise UsageError(f"{file} holds no labels")
    return pairs


def store(settings: ControllerSettings, pairs: list[tuple[str, str]], known: set[str] | None) -> predlog.Stored:
    with opened(settings) as conn:
        try:
            return predlog.add_feedback(conn, pairs, known)
        except predlog.FeedbackRefused as exc:
            raise UsageError(str(exc)) from None


def quality(settings: ControllerSettings, since: float = 0.0) -> list[predlog.Quality]:
    if not path(settings).exists():
        return []
    with opened(settings, readonly=True) as conn:
        return _read(settings, lambda: predlog.quality(conn, since))


def inputs(
    settings: ControllerSettings, version: int, length: tuple[int, int] | None, since: float = 0.0
) -> predlog.Inputs | None:
    if not path(settings).exists():
        return None
    with opened(settings, readonly=True) as conn:
        return _read(settings, lambda: predlog.inputs(conn, version, length, since))


def paired(
    settings: ControllerSettings, candidate: tuple[int, str], live: tuple[int, str], since: float = 0.0
) -> list[tuple[bool, bool]]:
    if not path(settings).exists():
        return []
    with opened(settings, readonly=True) as conn:
        return _read(settings, lambda: predlog.paired(conn, candidate, live, since))


def _read(settings: ControllerSettings, query: Callable[[], T]) -> T:
    try:
        return query()
    except sqlite3.Error as exc:
        raise NeedsOperator(f"the prediction log {path(settings)} cannot be read: {exc}") from None
