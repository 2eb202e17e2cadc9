"""What the console's pages show, gathered from the deployment the CLI drives: its status (checked
against what runs, with short probe timeouts so that a slow instance cannot hold a page up), the
manifests of the versions in its slots, the gate's verdict, the staged candidate's shadow evidence,
and the history."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifact.manifest import Manifest
from artifact.safeio import MAX_REPORT_BYTES, read_capped
from controller.core import evidence
from controller.drivers import registry
from controller.drivers.probes import HttpProbes
from controller.errors import UsageError
from controller.run import live
from controller.run.checks import gate
from controller.run.deployment import Deployment
from controller.settings import ControllerSettings

PROBE_SECONDS = 0.5
METRICS = ("accuracy", "macro_f1")


def deployment(settings: ControllerSettings, actor: str | None = None) -> Deployment:
    return Deployment(settings, probes=HttpProbes(timeout=PROBE_SECONDS), say=lambda _: None, actor=actor)


def manifest(settings: ControllerSettings, name: str | None, version: int | None) -> Manifest | None:
    """A slot's manifest, or None where it cannot be read: a page still shows what it can."""
    if name is None or version is None:
        return None
    try:
        return registry.manifest(settings.models_dir, name, version, settings.trust())
    except UsageError:
        return None


def report(settings: ControllerSettings, name: str | None, version: int, file: str) -> bytes | None:
    """A version's report file, if it is a regular file (no link followed) whose sha256 the signed
    manifest lists: anything else in the models folder (a link to the signing key) is never served."""
    found = manifest(settings, name, version)
    digest = found.reports.get(file) if found else None
    if found is None or digest is None:
        return None
    path = registry.version_dir(settings.models_dir, found.name, version) / file
    try:
        data = read_capped(path, MAX_REPORT_BYTES)
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == digest else None


def describe(manifest: Manifest | None) -> dict[str, Any]:
    """What a person deciding needs to know about a version, at a glance."""
    if manifest is None:
        return {}
    kind = manifest.model.get("kind", "?")
    holdout = manifest.metrics.get("holdout", {})
    return {
        "kind": kind,
        "family": "rules" if kind == "rules" else "ML",
        "created_at": manifest.created_at[:19].replace("T", " "),
        "dataset": f"{Path(manifest.dataset.path).name} ({manifest.dataset.rows} rows, {manifest.dataset.sha256[:8]})",
        "revision": (manifest.git_revision or "unknown")[:12],
        "metric": manifest.metric,
        "score": holdout.get(manifest.metric),
    }


def overview(settings: ControllerSettings) -> dict[str, Any]:
    driven = deployment(settings)
    status = driven.status()
    for slot in status["slots"]:
        slot["about"] = describe(manifest(settings, status["name"], slot["version"]))
    if status["slots"] and not status.get("state_problem"):
        status["quality"] = live.report(settings, driven.store.load())
    return status


@dataclass(frozen=True)
class Row:
    label: str
    live: float | None
    candidate: float | None

    @property
    def delta(self) -> float | None:
        return None if self.live is None or self.candidate is None else self.candidate - self.live


def _sets(m: Manifest) -> dict[str, dict[str, Any]]:
    return {"held-out split": m.metrics.get("holdout", {}), **m.metrics.get("eval_sets", {})}


def compare(settings: ControllerSettings) -> dict[str, Any]:
    """The candidate (the staged slot, else the rollback target) against the live slot."""
    status = overview(settings)
    slots = {slot["role"]: slot for slot in status["slots"]}
    live, candidate = slots.get("live"), slots.get("staged") or slots.get("previous")
    page: dict[str, Any] = {"status": status, "live": live, "candidate": candidate}
    if live is None or candidate is None:
        return page
    name = status["name"]
    old, new = manifest(settings, name, live["version"]), manifest(settings, name, candidate["version"])
    if old is None or new is None:
        return page
    sets = []
    for set_name, metrics in _sets(new).items():
        before = _sets(old).get(set_name, {})
        sets.append((set_name, [Row(m, before.get(m), metrics.get(m)) for m in METRICS]))
    classes = []
    live_classes = old.metrics.get("holdout", {}).get("per_class", {})
    for label, scores in new.metrics.get("holdout", {}).get("per_class", {}).items():
        before = live_classes.get(label, {})
        classes.append((label, [Row(m, before.get(m), scores.get(m)) for m in ("precision", "recall", "f1")]))
    classes.sort(key=lambda item: -abs(item[1][2].delta or 0.0))
    decision = gate(new, old, settings.gate_tolerance)
    page |= {"sets": sets, "classes": classes, "gate": decision, "evidence": live_evidence(settings)}
    return page


def live_evidence(settings: ControllerSettings, examples: int = 5, shares: int = 8) -> dict[str, Any] | None:
    """The staged candidate's shadow evidence as `release evidence --json` has it, with the verdict
    the promote would give; None when no candidate is staged with shadow traffic."""
    _, found = deployment(settings).evidence()
    if found is None:
        return None
    data = evidence.as_json(found, settings)
    data["shares"] = data["shares"][:shares]
    data["examples"] = data["examples"][:examples]
    return data | {"over": evidence.duration(found.span), "verdict": evidence.judge(found, settings)}


def act(settings: ControllerSettings, action: str, actor: str) -> str:
    """A deploy, a rollback or an abort: the CLI's own operation, under the same lock, as ``actor``."""
    operation = deployment(settings, actor=actor)
    if action == "abort":
        return operation.abort()
    return operation.promote() if action == "promote" else operation.rollback()


def model_name(settings: ControllerSettings) -> str | None:
    return deployment(settings).store.load().name


def history(settings: ControllerSettings) -> list[dict[str, Any]]:
    return deployment(settings).history()[::-1]
