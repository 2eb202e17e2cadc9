"""What is observed, and the status view built from it: the facts checked against what really runs
(processes or containers alive, ``/readyz`` identity, where the router really points, strays)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from artifact.manifest import Manifest
from controller.core.facts import Canary, Facts, Instance
from controller.core.phase import Observed, derive_phase
from controller.drivers import host
from controller.drivers.seams import Seams
from controller.errors import SwitchyardError
from controller.run import repair
from controller.settings import ControllerSettings

ManifestOf = Callable[[Facts, int], Manifest]


def observe(
    facts: Facts,
    seams: Seams,
    manifest_of: ManifestOf,
    settings: ControllerSettings,
    port_free: Callable[[str, int], bool] = host.port_free,
) -> Observed:
    ready: dict[str, bool] = {}
    alive: dict[str, bool] = {}
    problems: dict[str, str] = {}
    for color, slot in facts.slots.items():
        alive[color] = seams.backend.alive(slot.handle)
        problem = _readiness(facts, seams, manifest_of, slot) if alive[color] else "not running"
        ready[color] = problem is None
        if problem is not None:
            problems[color] = problem
    router_alive = facts.router is not None and seams.router.alive(facts.router)
    target = seams.router.current(facts.router) if facts.router is not None and router_alive else None
    instances, routers = repair.strays(facts, seams)
    busy = None
    if facts.active is None and not port_free(settings.router_host, settings.router_port):
        busy = f"{settings.router_port} on {settings.router_host} is in use ({host.port_user(settings.router_port)})"
    return Observed(
        ready=ready,
        alive=alive,
        problems=problems,
        router_alive=router_alive,
        router_target=target,
        stray_instances=instances,
        stray_routers=routers,
        port_busy=busy,
    )


def _readiness(facts: Facts, seams: Seams, manifest_of: ManifestOf, slot: Instance) -> str | None:
    """Why a running slot is not ready, or None. An artifact that cannot be read (the models folder
    moved, or another one named) is a problem to report, never a reason for `status` or `down` to fail."""
    try:
        manifest = manifest_of(facts, slot.version)
    except SwitchyardError as exc:
        return f"its artifact cannot be read: {str(exc).splitlines()[0]}"
    return seams.probes.readiness(slot, manifest)


def _role(facts: Facts, color: str) -> str:
    if color == facts.active:
        return "live"
    if color == facts.staged:
        return "staged"
    return "previous" if color == facts.previous else "idle"


def status(facts: Facts, observed: Observed, seams: Seams, run_dir: Path) -> dict[str, Any]:
    phase, reason = derive_phase(facts, observed)
    now = seams.clock.time()
    slots = []
    for color in ("blue", "green"):
        slot = facts.slot(color)
        if slot is None:
            continue
        alive = observed.alive.get(color, False)
        slots.append(
            {
                "color": color,
                "role": _role(facts, color),
                "version": slot.version,
                "handle": slot.handle,
                "url": slot.url,
                "alive": alive,
                "ready": observed.ready.get(color, False),
                "problem": observed.problems.get(color),
                "age_seconds": round(now - slot.started_at, 1),
                "last_log": None if alive else seams.backend.logs(slot.handle, 5),
            }
        )
    router = None
    if facts.router:
        target = next((c for c, s in facts.slots.items() if s.socket == observed.router_target), None)
        router = {
            "kind": facts.router.kind,
            "url": facts.router.url,
            "handle": facts.router.handle,
            "alive": observed.router_alive,
            "target": target,
        }
    op = facts.op
    return {
        "phase": str(phase),
        "reason": reason,
        "name": facts.name,
        "router": router,
        "slots": slots,
        "interrupted": None if op is None else {"action": op.action, "version": op.version, "step": op.step},
        "run_dir": str(run_dir.resolve()),
    }


def rollout(facts: Facts, seams: Seams) -> dict[str, Any] | None:
    """A canary or a watch in progress: its step, weight and time left, and what the router really does."""
    current = facts.rollout
    if current is None:
        return None
    slot = facts.slots[current.color]
    elapsed = seams.clock.time() - current.started_at
    length = current.step_seconds if isinstance(current, Canary) else current.watch_seconds
    shares = seams.router.shares(facts.router) if facts.router is not None else {}
    return {
        "kind": current.kind,
        "color": current.color,
        "version": slot.version,
        "weight": current.weight,
        "steps": list(current.steps) if isinstance(current, Canary) else [],
        "step": current.step + 1 if isinstance(current, Canary) else 1,
        "seconds_left": round(max(0.0, length - elapsed), 1),
        "router_share": shares.get(slot.socket, 0),
    }
