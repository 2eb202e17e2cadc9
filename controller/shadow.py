"""Shadow traffic, from the controller's side: which instance mirrors to which follows from the facts.

While a candidate is staged with shadow traffic (``Facts.shadow``), ``<run dir>/shadow/control.json``
names the live instance's socket as the source and the candidate's as the target; otherwise the file
is absent. :func:`reconcile` makes the file match the facts and is idempotent, so every command calls
it once the facts are settled: a controller killed between a commit and the file write leaves a file
the next command corrects, and instances only ever follow the file (:mod:`service.shadow`).

Records of paired answers live beside it, one file per candidate instance, owner-only; files of
instances no slot holds any more are removed, so the folder stays bounded.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from controller.facts import Facts, Instance
from controller.seams import Clock
from controller.settings import ControllerSettings

CONTROL = "control.json"


def folder(settings: ControllerSettings) -> Path:
    return (settings.run_dir / "shadow").resolve()


def ensure_folder(settings: ControllerSettings) -> Path:
    """Owner-only; for Docker, the service's unprivileged user must write its records here too."""
    path = folder(settings)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o1777 if settings.backend == "docker" else 0o700)
    return path


def records_name(candidate: Instance) -> str:
    return f"{Path(candidate.socket).stem}.jsonl"


def records(settings: ControllerSettings, candidate: Instance) -> Path:
    return folder(settings) / records_name(candidate)


def desired(facts: Facts, settings: ControllerSettings) -> dict[str, Any] | None:
    if facts.shadow is None or facts.staged is None or facts.active is None or facts.op is not None:
        return None
    live, candidate = facts.slots[facts.active], facts.slots[facts.staged]
    return {
        "source": live.socket,
        "target": candidate.socket,
        "records": records_name(candidate),
        "percent": facts.shadow.percent,
        "rate": facts.shadow.rate,
        "timeout": settings.shadow_timeout,
        "max_records": settings.shadow_max_records,
        "max_examples": settings.shadow_examples,
    }


def reconcile(facts: Facts, settings: ControllerSettings) -> Path | None:
    """Make ``control.json`` say what the facts say, and drop records no slot needs. Returns the
    records file the live instance is to create when the request is new, so the caller can wait for it."""
    path = folder(settings) / CONTROL
    want = desired(facts, settings)
    if path.parent.is_dir():
        keep = {records_name(slot) for slot in facts.slots.values()}
        for stale in path.parent.glob("*.jsonl"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
    if want is None:
        if path.exists():
            path.unlink()
        return None
    text = json.dumps(want, sort_keys=True)
    try:
        if path.read_text() == text:
            return None
    except OSError:
        pass
    ensure_folder(settings)
    tmp = path.with_name(f".control-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)  # socket paths only; the instances' user must read it
    os.replace(tmp, path)
    return path.parent / want["records"]


def wait_started(records_file: Path, clock: Clock, timeout: float = 5.0) -> bool:
    """The live instance opens the records file as it starts copying (it looks twice a second)."""
    deadline = clock.monotonic() + timeout
    while not records_file.exists():
        if clock.monotonic() > deadline:
            return False
        clock.sleep(0.05)
    return True
