"""The planner: a pure function from (command, facts, what was observed) to a refusal or a plan.

Every refusal lives here: the (phase x command) table of :mod:`controller.phase` and the ones that
depend on the facts (a version already live, nothing to roll back to, a flip target that is not
healthy, the router's port taken). A plan is the ordered steps (:mod:`controller.steps`) that
:mod:`controller.runner` carries out. Nothing here touches a process, a file or the
network, so every pair of phase and command, and every option that changes a plan, is tested on data.
"""

from __future__ import annotations

import dataclasses

from controller.errors import NeedsOperator, UsageError
from controller.facts import Event, Facts, Rollout, other
from controller.phase import HINTS, Observed, Phase, derive_phase, refusal
from controller.steps import Command, Plan, Refusal, Step


def plan(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    phase = derive_phase(facts, observed)[0] if facts.active else Phase.ABSENT
    reason = refusal(phase, command.table_name)
    if reason:
        return Refusal(reason)
    if command.name == "up":
        return _up(command, facts, observed)
    if command.name == "stage":
        return _stage_or_refuse(command, facts, observed)
    if command.name == "promote":
        return _promote(command, facts, observed)
    if command.name == "rollback" and not (facts.rollout and facts.rollout.kind == "canary"):
        return _rollback(facts, observed, command)
    if command.name in ("abort", "rollback"):
        return _abort(command, facts, observed)
    if command.name == "advance":
        return _advance(command, facts)
    if command.name == "conclude":
        return _conclude(command, facts)
    if command.name == "heal":
        return _heal(facts, observed)
    if command.name == "down":
        return _down(facts, observed)
    raise ValueError(f"no plan for {command.name!r}")


def _version(facts: Facts, color: str | None) -> int | None:
    slot = facts.slot(color)
    return slot.version if slot else None


def _checked_start(action: str, color: str, version: int, force: bool) -> list[Step]:
    return [Step(name, action, color, version, forced=force) for name in ("verify", "start", "ready", "smoke", "gate")]


def _dead_live(facts: Facts, observed: Observed) -> Refusal | None:
    """A live slot that does not answer is never reported as success ("already up", "already live")."""
    assert facts.active is not None
    if observed.ready.get(facts.active):
        return None
    live = facts.slots[facts.active]
    problem = observed.problems.get(facts.active, "not ready")
    way_out = "`release down`, then `release up` to start it again"
    if facts.previous and observed.ready.get(facts.previous):
        way_out = (
            f"`release rollback` to send users to v{facts.slots[facts.previous].version}, which is ready, or " + way_out
        )
    return Refusal(
        f"{facts.name} v{live.version} is live in {facts.active}, but it is {problem}: users get errors; {way_out}",
        NeedsOperator,
    )


def _up(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    assert command.model is not None and command.version is not None
    if facts.active is not None:
        dead = _dead_live(facts, observed)
        if dead is not None:
            return dead
        live = facts.slots[facts.active]
        notes: tuple[str, ...] = ()
        if (facts.name, live.version) != (command.model, command.version):
            notes = (f"use `release.py promote {command.version}` to release v{command.version}",)
        return Plan((Step("ensure-router", "up", facts.active, live.version),), facts, notes=notes)
    if observed.strays:
        return Refusal(
            f"{observed.strays} process(es) of this deployment run, but no state records them (was the state "
            "file lost?); nothing was stopped: `release down` stops them, then `release up` starts afresh",
            NeedsOperator,
        )
    if observed.port_busy:
        return Refusal(f"port {observed.port_busy} is in use; choose another with --port", UsageError)
    steps = _checked_start("up", "blue", command.version, False)
    steps += [Step("router", "up", "blue", command.version), Step("commit", "up", "blue", command.version)]
    return Plan(tuple(steps), Facts(name=command.model))


def _stage_or_refuse(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    steps = _stage(command, facts, observed)
    return steps if isinstance(steps, Refusal) else Plan(tuple(steps), facts)


def _stage(command: Command, facts: Facts, observed: Observed) -> list[Step] | Refusal:
    assert facts.active is not None and command.version is not None
    version, force = command.version, command.force
    if _version(facts, facts.active) == version:
        return Refusal(f"cannot stage: v{version} is already live in {facts.active}")
    idle = other(facts.active)
    existing = facts.slot(idle)
    if existing is not None and existing.version == version and observed.ready.get(idle):
        # The idle slot already runs this version, ready and with the right identity: check, don't restart.
        steps = [Step(name, "stage", idle, version, forced=force) for name in ("smoke", "gate", "speed")]
        return [*steps, Step("commit", "stage", idle, version, forced=force, shadow=command.shadow)]
    steps = [
        *_checked_start("stage", idle, version, force),
        Step("speed", "stage", idle, version, forced=force),
        Step("commit", "stage", idle, version, forced=force, shadow=command.shadow),
    ]
    if existing is not None:
        steps.append(Step("stop", "stage", idle, existing.version, handle=existing.handle))
    return steps


def _watch(command: Command, color: str) -> Rollout | None:
    return Rollout("watch", color, watch_seconds=command.watch_seconds) if command.watch_seconds > 0 else None


def _flip(
    action: str, facts: Facts, target: str, version: int, force: bool, rollout: Rollout | None = None
) -> list[Step]:
    """A deploy is checked against what is live when it is made (a candidate may have been staged
    with --force, or against another live version) and against its shadow-traffic evidence; a
    rollback goes back to what was live before."""
    assert facts.active is not None
    old = facts.slots[facts.active]
    checked = ("gate", "evidence") if action == "promote" else ()
    return [
        *(Step(name, action, target, version, forced=force) for name in checked),
        Step("flip", action, target, version, forced=force),
        Step("retire", action, facts.active, old.version, handle=old.handle),
        Step("commit", action, target, version, forced=force, rollout=rollout),
    ]


def _unhealthy(action: str, facts: Facts, observed: Observed, target: str, force: bool) -> Refusal | None:
    """A flip goes only to a slot that is ready and serves the right identity, as observed."""
    if observed.ready.get(target):
        return None
    slot = facts.slots[target]
    problem = observed.problems.get(target) or ("not running" if not observed.alive.get(target) else "not ready")
    reason = f"{target} (v{slot.version}) is not healthy ({problem}); refusing to flip to it"
    event = Event(action, "refused", _version(facts, facts.active), slot.version, "ready", reason, force)
    return Refusal(f"cannot {action}: {reason}", event=event)


def _promote(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    assert facts.active is not None
    version, force = command.version, command.force
    if version is not None:
        if _version(facts, facts.active) == version:
            return _dead_live(facts, observed) or Plan(
                (), facts, message=f"promote: v{version} is already live; nothing to do"
            )
        if not (facts.staged and _version(facts, facts.staged) == version):
            # The one-button path: stage (its own history line), then flip to what was just checked.
            staged = _stage(command, facts, observed)
            if isinstance(staged, Refusal):
                return staged
            # Its gate ran in the stage, a moment ago; it has had no traffic to gather evidence from.
            idle = other(facts.active)
            note = "no shadow evidence: staged and deployed in one command (`stage` first to gather it)"
            flip = _flip("promote", facts, idle, version, force, _watch(command, idle))[2:]
            return Plan((*staged, *flip), facts, notes=(note,))
    rollout = facts.rollout
    if rollout is not None and rollout.kind == "canary":
        return _complete(command, facts, "completed by hand")
    if facts.staged is None:
        return Refusal(f"cannot promote: {HINTS[(Phase.HEALTHY, 'promote')]}")
    target_version = facts.slots[facts.staged].version
    unhealthy = _unhealthy("promote", facts, observed, facts.staged, force)
    if unhealthy:
        return unhealthy
    if command.canary and command.canary[0] < 100:
        steps = _flip("promote", facts, facts.staged, target_version, force)[:2]  # gate, evidence
        canary = Rollout(
            "canary",
            facts.staged,
            steps=command.canary,
            step_seconds=command.step_seconds,
            watch_seconds=command.watch_seconds,
        )
        steps += [
            Step("weigh", "canary", facts.staged, target_version, weight=command.canary[0]),
            Step("commit", "canary", facts.staged, target_version, forced=force, rollout=canary),
        ]
        return Plan(tuple(steps), facts)
    flip = _flip("promote", facts, facts.staged, target_version, force, _watch(command, facts.staged))
    return Plan(tuple(flip), facts)


def _complete(command: Command, facts: Facts, reason: str) -> Plan:
    """The canary's last step: the full flip, then the watch if one was asked for."""
    rollout = facts.rollout
    assert rollout is not None and facts.active is not None
    version = facts.slots[rollout.color].version
    watch = _watch(dataclasses.replace(command, watch_seconds=rollout.watch_seconds), rollout.color)
    steps = _flip("promote", facts, rollout.color, version, False, watch)[2:]
    last = dataclasses.replace(steps[-1], action="promote", reason=f"canary {reason}: {_path(rollout)}")
    return Plan((*steps[:-1], last), facts)


def _path(rollout: Rollout) -> str:
    return " -> ".join(f"{w}%" for w in rollout.steps[: rollout.step + 1]) + (
        " -> 100%" if rollout.steps[rollout.step] < 100 else ""
    )


def _advance(command: Command, facts: Facts) -> Plan | Refusal:
    rollout = facts.rollout
    if rollout is None or rollout.kind != "canary":
        return Refusal("cannot advance: no canary is in progress")
    after = dataclasses.replace(rollout, step=rollout.step + 1)
    if after.weight >= 100:
        return _complete(command, facts, command.reason or "passed every step")
    version = facts.slots[rollout.color].version
    return Plan(
        (
            Step("weigh", "canary", rollout.color, version, weight=after.weight),
            Step("commit", "canary", rollout.color, version, rollout=after, reason=command.reason),
        ),
        facts,
    )


def _abort(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    rollout = facts.rollout
    if rollout is None:
        return Refusal(f"cannot {command.name}: no canary or watch is in progress")
    if rollout.kind == "watch":
        return _rollback(facts, observed, command)
    version = facts.slots[rollout.color].version
    reason = command.reason or f"aborted by hand at {rollout.weight}%"
    return Plan(
        (
            Step("weigh", "abort", rollout.color, version, weight=0),
            Step("commit", "abort", rollout.color, version, reason=reason),
        ),
        facts,
    )


def _conclude(command: Command, facts: Facts) -> Plan | Refusal:
    rollout = facts.rollout
    if rollout is None or rollout.kind != "watch":
        return Refusal("cannot conclude: no watch is in progress")
    version = facts.slots[rollout.color].version
    return Plan((Step("commit", "watch", rollout.color, version, reason=command.reason),), facts)


def _heal(facts: Facts, observed: Observed) -> Plan | Refusal:
    """Restart what died (the live slot first, with traffic on the other slot meanwhile if it is
    ready), then make sure the router runs and points where the facts say."""
    if facts.active is None:
        return Refusal("nothing to restore: no deployment is recorded here; `release up NAME VERSION` starts one")
    live = facts.slots[facts.active]
    steps: list[Step] = []
    idle = other(facts.active)
    if not observed.alive.get(facts.active) and observed.ready.get(idle) and observed.router_alive:
        steps.append(Step("failover", "heal", idle, facts.slots[idle].version))
    for color in (facts.active, idle):
        slot = facts.slot(color)
        if slot is not None and not observed.alive.get(color):
            steps += [Step(name, "heal", color, slot.version) for name in ("verify", "start", "ready")]
            steps.append(Step("commit", "heal", color, slot.version))
    steps.append(Step("ensure-router", "heal", facts.active, live.version))
    return Plan(tuple(steps), facts)


def _rollback(facts: Facts, observed: Observed, command: Command) -> Plan | Refusal:
    target = facts.previous
    if target is None or facts.slot(target) is None:
        held = f"; {facts.staged} holds the staged v{_version(facts, facts.staged)}" if facts.staged else ""
        return Refusal(f"cannot rollback: there is no previous slot to flip back to{held}")
    version = facts.slots[target].version
    unhealthy = _unhealthy("rollback", facts, observed, target, False)
    if unhealthy:
        return unhealthy
    steps = _flip("rollback", facts, target, version, False)
    last = dataclasses.replace(steps[-1], reason=command.reason, parked=command.automatic)
    return Plan((*steps[:-1], last), facts)


def _down(facts: Facts, observed: Observed) -> Plan:
    steps = [Step("stop-router", "down", handle=facts.router.handle)] if facts.router else []
    steps += [Step("stop-router", "down", handle=handle) for handle in observed.stray_routers]
    handles = [slot.handle for slot in facts.slots.values()]
    if facts.op and facts.op.candidate:
        handles.append(facts.op.candidate.handle)
    handles += [h for h in observed.stray_instances if h not in handles]
    steps += [Step("stop", "down", handle=handle) for handle in dict.fromkeys(handles)]
    if not steps and facts == Facts():
        return Plan((), facts, message="down: nothing runs in this deployment")
    return Plan((*steps, Step("commit", "down", version=_version(facts, facts.active))), facts)
