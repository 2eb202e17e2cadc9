"""Shadow traffic, from the controller's side: which instance mirrors to which follows from the facts.

While a candidate is staged with shadow traffic (``Facts.shadow``), ``<run dir>/shadow/control.json``
names the live instance's socket as the source and the candidate's as the target; otherwise the file
is absent. :func:`reconcile` makes the file match the facts and is idempotent, so every command calls
it once the facts are settled: a controller killed between a commit and the file write leaves a file
the next command corrects, and instances only ever follow the file (:mod:`service.shadow`; the format
is :mod:`artifact.shadow`).

Records of paired answers live beside it, one file per candidate instance, owner-only; files of
instances no slot holds any more are removed, so the folder stays bounded.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from artifact.safeio import private_dir, read_capped
from artifact.shadow import CONTROL, Control
from controller.core.evidence import Evidence, fold
from controller.core.facts import Facts, Instance
from controller.drivers import host
from controller.drivers.seams import Clock
from controller.settings import ControllerSettings

# A record is a few hundred bytes (a few KiB with its input, for the kept examples); the service stops
# at shadow_max_records (100,000 by default): far under this cap, which only stops a planted monster.
MAX_RECORDS_BYTES = 256 << 20


def folder(settings: ControllerSettings) -> Path:
    return (settings.run_dir / "shadow").resolve()


def ensure_folder(settings: ControllerSettings) -> Path:
    """Owner-only; for Docker, owned by the containers' user, who writes its records here too."""
    if settings.backend == "docker":
        return host.shared_folder(folder(settings), 0o700)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    return private_dir(folder(settings))


def records_name(candidate: Instance) -> str:
    return f"{Path(candidate.socket).stem}.jsonl"


def records(settings: ControllerSettings, candidate: Instance) -> Path:
    return folder(settings) / records_name(candidate)


def desired(facts: Facts, settings: ControllerSettings) -> Control | None:
    if facts.shadow is None or facts.staged is None or facts.active is None or facts.op is not None:
        return None
    live, candidate = facts.slots[facts.active], facts.slots[facts.staged]
    return Control(
        source=live.socket,
        target=candidate.socket,
        records=records_name(candidate),
        percent=facts.shadow.percent,
        rate=facts.shadow.rate,
        timeout=settings.shadow_timeout,
        max_records=settings.shadow_max_records,
        max_examples=settings.shadow_examples,
    )


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
    text = want.dump()
    try:
        if path.read_bytes() == text:
            return None
    except OSError:
        pass
    ensure_folder(settings)
    tmp = path.with_name(f".control-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(text)
    os.chmod(tmp, 0o644)  # socket paths only; the instances' user must read it
    os.replace(tmp, path)
    return path.parent / want.records


def wait_started(records_file: Path, clock: Clock, timeout: float = 5.0) -> bool:
    """The live instance opens the records file as it starts copying (it looks twice a second)."""
    deadline = clock.monotonic() + timeout
    while not records_file.exists():
        if clock.monotonic() > deadline:
            return False
        clock.sleep(0.05)
    return True


def evidence(settings: ControllerSettings, candidate: Instance, max_examples: int = 20) -> Evidence:
    """The candidate's shadow evidence so far (none yet: empty). The records file is written by the
    live instance (in Docker, as the containers' user): read without following a link, capped."""
    try:
        data = read_capped(records(settings, candidate), MAX_RECORDS_BYTES)
    except FileNotFoundError:
        data = b""
    return fold(data.splitlines(), max_examples)
