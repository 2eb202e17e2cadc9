"""The planner: a pure function from (command, facts, what was observed) to a refusal or a plan.

Every refusal lives here: the (phase x command) table of :mod:`controller.core.phase` and the ones that
depend on the facts (a version already live, nothing to roll back to, a flip target that is not
healthy, the router's port taken). A plan is the ordered steps (:mod:`controller.core.steps`) that
:mod:`controller.run.runner` carries out. Nothing here touches a process, a file or the
network, so every pair of phase and command, and every option that changes a plan, is tested on data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from controller import messages
from controller.core.facts import Canary, Event, Facts, Rollout, Watch, other
from controller.core.phase import Observed, Phase, derive_phase, refusal
from controller.core.steps import Command, Plan, Refusal, Step
from controller.errors import NeedsOperator, UsageError
from controller.vocabulary import StepName, Verb


def plan(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    phase = derive_phase(facts, observed)[0] if facts.active else Phase.ABSENT
    reason = refusal(phase, command.table_name)
    if reason:
        return Refusal(reason)
    return PLANNERS[command.name](command, facts, observed)


def _version(facts: Facts, color: str | None) -> int | None:
    slot = facts.slot(color)
    return slot.version if slot else None


def _checked_start(action: Verb, color: str, version: int, force: bool) -> list[Step]:
    return [
        Step(name, action, color, version, forced=force)
        for name in (StepName.VERIFY, StepName.START, StepName.READY, StepName.SMOKE, StepName.GATE)
    ]


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
        messages.LIVE_IS_DOWN(
            name=facts.name, version=live.version, color=facts.active, problem=problem, way_out=way_out
        ),
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
        return Plan((Step(StepName.ENSURE_ROUTER, Verb.UP, facts.active, live.version),), facts, notes=notes)
    if observed.strays:
        return Refusal(
            f"{observed.strays} process(es) of this deployment run, but no state records them (was the state "
            "file lost?); nothing was stopped: `release down` stops them, then `release up` starts afresh",
            NeedsOperator,
        )
    if observed.port_busy:
        return Refusal(f"port {observed.port_busy}; choose another with --port", UsageError)
    steps = _checked_start(Verb.UP, "blue", command.version, False)
    steps += [
        Step(StepName.ROUTER, Verb.UP, "blue", command.version),
        Step(StepName.COMMIT, Verb.UP, "blue", command.version),
    ]
    return Plan(tuple(steps), Facts(name=command.model))


def _stage_or_refuse(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    steps = _stage(command, facts, observed)
    return steps if isinstance(steps, Refusal) else Plan(tuple(steps), facts)


def _stage(command: Command, facts: Facts, observed: Observed) -> list[Step] | Refusal:
    assert facts.active is not None and command.version is not None
    version, force = command.version, command.force
    if _version(facts, facts.active) == version:
        return Refusal(
            messages.CANNOT(command="stage", reason=messages.ALREADY_LIVE(version=version, color=facts.active))
        )
    idle = other(facts.active)
    existing = facts.slot(idle)
    if existing is not None and existing.version == version and observed.ready.get(idle):
        # The idle slot already runs this version, ready and with the right identity: check, don't restart.
        steps = [
            Step(name, Verb.STAGE, idle, version, forced=force)
            for name in (StepName.SMOKE, StepName.GATE, StepName.SPEED)
        ]
        return [*steps, Step(StepName.COMMIT, Verb.STAGE, idle, version, forced=force, shadow=command.shadow)]
    steps = [
        *_checked_start(Verb.STAGE, idle, version, force),
        Step(StepName.SPEED, Verb.STAGE, idle, version, forced=force),
        Step(StepName.COMMIT, Verb.STAGE, idle, version, forced=force, shadow=command.shadow),
    ]
    if existing is not None:
        steps.append(Step(StepName.STOP, Verb.STAGE, idle, existing.version, handle=existing.handle))
    return steps


def _watch(command: Command, color: str) -> Watch | None:
    return Watch(color, command.watch_seconds) if command.watch_seconds > 0 else None


def _flip(
    action: Verb,
    facts: Facts,
    target: str,
    version: int,
    force: bool,
    rollout: Rollout | None = None,
    *,
    parked: bool = False,
) -> list[Step]:
    """A deploy is checked against what is live when it is made (a candidate may have been staged
    with --force, or against another live version) and against its shadow-traffic evidence; a
    rollback goes back to what was live before."""
    assert facts.active is not None
    old = facts.slots[facts.active]
    checked = (StepName.GATE, StepName.EVIDENCE) if action == Verb.PROMOTE else ()
    return [
        *(Step(name, action, target, version, forced=force) for name in checked),
        Step(StepName.FLIP, action, target, version, forced=force, rollout=rollout, parked=parked),
        Step(StepName.RETIRE, action, facts.active, old.version, handle=old.handle),
        Step(StepName.COMMIT, action, target, version, forced=force, rollout=rollout, parked=parked),
    ]


def _unhealthy(action: Verb, facts: Facts, observed: Observed, target: str, force: bool) -> Refusal | None:
    """A flip goes only to a slot that is ready and serves the right identity, as observed."""
    if observed.ready.get(target):
        return None
    slot = facts.slots[target]
    problem = observed.problems.get(target) or ("not running" if not observed.alive.get(target) else "not ready")
    reason = messages.NOT_HEALTHY(color=target, version=slot.version, problem=problem)
    event = Event(action, "refused", _version(facts, facts.active), slot.version, StepName.READY, reason, force)
    return Refusal(messages.CANNOT(command=action, reason=reason), event=event)


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
            note = "no shadow evidence: staged and deployed in one command (`stage` first to gather it)"
            deploy = _deploy(command, facts, other(facts.active), version, checked=False)
            return Plan((*staged, *deploy), facts, notes=(note,))
    rollout = facts.rollout
    if isinstance(rollout, Canary):
        return _complete(command, facts, rollout, "completed by hand")
    if facts.staged is None:
        return Refusal(messages.CANNOT(command="promote", reason=messages.NOTHING_STAGED()))
    target_version = facts.slots[facts.staged].version
    unhealthy = _unhealthy(Verb.PROMOTE, facts, observed, facts.staged, force)
    if unhealthy:
        return unhealthy
    return Plan(tuple(_deploy(command, facts, facts.staged, target_version, checked=True)), facts)


def _deploy(command: Command, facts: Facts, target: str, version: int, *, checked: bool) -> list[Step]:
    """A promote's deploy, the same whichever path reached it (a staged version, or the one-button
    stage-then-deploy): the first canary weight, or the full flip and its watch. ``checked``: the
    gate and the evidence come first (the one-button path ran its gate in the stage just now)."""
    force = command.force
    flip = _flip(Verb.PROMOTE, facts, target, version, force, _watch(command, target))
    checks = flip[:2] if checked else []  # gate, evidence
    if not (command.canary and command.canary[0] < 100):
        return [*checks, *flip[2:]]
    canary = Canary(
        target,
        steps=command.canary,
        step_seconds=command.step_seconds,
        watch_seconds=command.watch_seconds,
    )
    return [
        *checks,
        Step(StepName.WEIGH, Verb.CANARY, target, version, weight=command.canary[0]),
        Step(StepName.COMMIT, Verb.CANARY, target, version, forced=force, rollout=canary),
    ]


def _complete(command: Command, facts: Facts, rollout: Canary, reason: str) -> Plan:
    """The canary's last step: the full flip, then the watch if one was asked for."""
    version = facts.slots[rollout.color].version
    watch = _watch(dataclasses.replace(command, watch_seconds=rollout.watch_seconds), rollout.color)
    steps = _flip(Verb.PROMOTE, facts, rollout.color, version, False, watch)[2:]
    last = dataclasses.replace(steps[-1], action=Verb.PROMOTE, reason=f"canary {reason}: {_path(rollout)}")
    return Plan((*steps[:-1], last), facts)


def _path(rollout: Canary) -> str:
    return " -> ".join(f"{w}%" for w in rollout.steps[: rollout.step + 1]) + (
        " -> 100%" if rollout.steps[rollout.step] < 100 else ""
    )


def _advance(command: Command, facts: Facts) -> Plan | Refusal:
    rollout = facts.rollout
    if not isinstance(rollout, Canary):
        return Refusal(messages.CANNOT(command="advance", reason=messages.NO_CANARY()))
    after = dataclasses.replace(rollout, step=rollout.step + 1)
    if after.weight >= 100:
        return _complete(command, facts, rollout, command.reason or "passed every step")
    version = facts.slots[rollout.color].version
    return Plan(
        (
            Step(StepName.WEIGH, Verb.CANARY, rollout.color, version, weight=after.weight),
            Step(StepName.COMMIT, Verb.CANARY, rollout.color, version, rollout=after, reason=command.reason),
        ),
        facts,
    )


def _abort(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    rollout = facts.rollout
    if rollout is None:
        return Refusal(messages.CANNOT(command=command.name, reason=messages.NO_ROLLOUT()))
    if isinstance(rollout, Watch):
        return _rollback(facts, observed, command)
    version = facts.slots[rollout.color].version
    reason = command.reason or f"aborted by hand at {rollout.weight}%"
    return Plan(
        (
            Step(StepName.WEIGH, Verb.ABORT, rollout.color, version, weight=0),
            Step(StepName.COMMIT, Verb.ABORT, rollout.color, version, reason=reason),
        ),
        facts,
    )


def _conclude(command: Command, facts: Facts) -> Plan | Refusal:
    rollout = facts.rollout
    if not isinstance(rollout, Watch):
        return Refusal(messages.CANNOT(command="conclude", reason=messages.NO_WATCH()))
    version = facts.slots[rollout.color].version
    return Plan((Step(StepName.COMMIT, Verb.WATCH, rollout.color, version, reason=command.reason),), facts)


def _heal(facts: Facts, observed: Observed) -> Plan | Refusal:
    """Restart what died (the live slot first, with traffic on the other slot meanwhile if it is
    ready), then make sure the router runs and points where the facts say."""
    if facts.active is None:
        return Refusal(messages.NOTHING_TO_RESTORE())
    live = facts.slots[facts.active]
    steps: list[Step] = []
    idle = other(facts.active)
    if not observed.alive.get(facts.active) and observed.ready.get(idle) and observed.router_alive:
        steps.append(Step(StepName.FAILOVER, Verb.HEAL, idle, facts.slots[idle].version))
    for color in (facts.active, idle):
        slot = facts.slot(color)
        if slot is not None and not observed.alive.get(color):
            steps += [
                Step(name, Verb.HEAL, color, slot.version) for name in (StepName.VERIFY, StepName.START, StepName.READY)
            ]
            steps.append(Step(StepName.COMMIT, Verb.HEAL, color, slot.version))
    steps.append(Step(StepName.ENSURE_ROUTER, Verb.HEAL, facts.active, live.version))
    return Plan(tuple(steps), facts)


def _rollback(facts: Facts, observed: Observed, command: Command) -> Plan | Refusal:
    target = facts.previous
    if target is None or facts.slot(target) is None:
        held = f"; {facts.staged} holds the staged v{_version(facts, facts.staged)}" if facts.staged else ""
        return Refusal(messages.CANNOT(command="rollback", reason=messages.NO_PREVIOUS_SLOT(held=held)))
    version = facts.slots[target].version
    unhealthy = _unhealthy(Verb.ROLLBACK, facts, observed, target, False)
    if unhealthy:
        return unhealthy
    steps = _flip(Verb.ROLLBACK, facts, target, version, False, parked=command.automatic)
    last = dataclasses.replace(steps[-1], reason=command.reason)
    return Plan((*steps[:-1], last), facts)


def _down(facts: Facts, observed: Observed) -> Plan:
    steps = [Step(StepName.STOP_ROUTER, Verb.DOWN, handle=facts.router.handle)] if facts.router else []
    steps += [Step(StepName.STOP_ROUTER, Verb.DOWN, handle=handle) for handle in observed.stray_routers]
    handles = [slot.handle for slot in facts.slots.values()]
    if facts.op and facts.op.candidate:
        handles.append(facts.op.candidate.handle)
    handles += [h for h in observed.stray_instances if h not in handles]
    steps += [Step(StepName.STOP, Verb.DOWN, handle=handle) for handle in dict.fromkeys(handles)]
    if not steps and facts == Facts():
        return Plan((), facts, message="down: nothing runs in this deployment")
    return Plan((*steps, Step(StepName.COMMIT, Verb.DOWN, version=_version(facts, facts.active))), facts)


def _rollback_or_abort(command: Command, facts: Facts, observed: Observed) -> Plan | Refusal:
    """During a canary, a rollback is its abort: every request back to the stable slot."""
    if isinstance(facts.rollout, Canary):
        return _abort(command, facts, observed)
    return _rollback(facts, observed, command)


Planner = Callable[[Command, Facts, Observed], Plan | Refusal]

# One entry per command that changes something; a new command adds its line here and its row in the
# phase table (:data:`controller.core.phase.ALLOWED`).
PLANNERS: dict[Verb, Planner] = {
    Verb.UP: _up,
    Verb.STAGE: _stage_or_refuse,
    Verb.PROMOTE: _promote,
    Verb.ROLLBACK: _rollback_or_abort,
    Verb.ABORT: _abort,
    Verb.ADVANCE: lambda command, facts, observed: _advance(command, facts),
    Verb.CONCLUDE: lambda command, facts, observed: _conclude(command, facts),
    Verb.HEAL: lambda command, facts, observed: _heal(facts, observed),
    Verb.DOWN: lambda command, facts, observed: _down(facts, observed),
}
