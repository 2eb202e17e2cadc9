"""The planner: a pure function from (command, facts, what was observed) to a refusal or a plan.

Every refusal lives here: the (phase x command) table of :mod:`controller.phase` and the ones that
depend on the facts (a version already live, nothing to roll back to, a flip target that is not
healthy, the router's port taken). A plan is the ordered steps that :mod:`controller.runner` carries
out, and :func:`leaves` says, for each step, the facts it leaves behind: the journal entry written
before it runs, and for a commit step the new facts. Nothing here touches a process, a file or the
network, so every pair of phase and command, and every option that changes a plan, is tested on data.

Steps, in the order a plan may hold them:

    verify   check the artifact's hash against its manifest (before anything starts)
    start    start the candidate in a slot                         journaled: a crash stops it
    ready    wait until it is ready and serves the right identity  journaled
    smoke    the golden rows through its HTTP API (and its claimed  journaled
             accuracy re-scored on them)
    gate     its metric against the live model's                   journaled
    evidence its shadow-traffic evidence against the rules (promote) journaled
    speed    its latency against live's on the same rows (stage)   journaled
    router   start the router in front of it (``up`` only)         journaled
    weigh    give the canary slot its share of live traffic (0: none) (idempotent; repair re-applies)
    failover send traffic to the other slot while the live one restarts (heal)
    flip     point the router at the target slot                  journaled: a crash rolls forward
    retire   the old slot closes the router's pooled connections   (or back, by where the router points)
    commit   write the new facts and the history line
    stop / stop-router / ensure-router: idempotent clean-up and repair, after or instead of a commit
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from controller.errors import NeedsOperator, Refused, SwitchyardError, UsageError
from controller.facts import Event, Facts, Instance, Op, Rollout, Router, Shadow, other
from controller.phase import HINTS, Observed, Phase, derive_phase, refusal

JOURNALED = frozenset({"start", "ready", "smoke", "gate", "evidence", "speed", "router", "flip"})


@dataclass(frozen=True)
class Command:
    name: str  # up | stage | promote | rollback | down
    version: int | None = None
    model: str | None = None  # up: the model's name
    force: bool = False
    shadow: Shadow | None = None  # stage: copies of live traffic for the candidate
    canary: tuple[int, ...] = ()  # promote: the canary's weights, step by step
    step_seconds: float = 60.0
    watch_seconds: float = 0.0  # promote: the watch after the deploy
    reason: str = ""  # what the agent decided, for the history line
    automatic: bool = False  # rollback by the agent: the failed version is parked, not the rollback target

    @property
    def table_name(self) -> str:
        """Its name in the (phase x command) table."""
        return "promote VERSION" if self.name == "promote" and self.version is not None else self.name


@dataclass(frozen=True)
class Step:
    name: str
    action: str  # the history action it belongs to: up | stage | promote | rollback | down
    color: str | None = None  # the slot it acts on
    version: int | None = None
    handle: str | None = None  # stop / stop-router: what to stop
    forced: bool = False
    shadow: Shadow | None = None  # a stage's commit: the candidate's shadow traffic
    weight: int = 0  # weigh: the canary's share in percent
    rollout: Rollout | None = None  # a commit's new rollout (its start time is the commit's)
    reason: str = ""  # a commit's history reason, when a person or the agent gave one
    parked: bool = False  # an automatic rollback's commit: the failed slot stays, staged, out of traffic


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    before: Facts  # the facts the run starts from (for `up`, the new deployment's name)
    message: str = ""  # for a plan with nothing to do: what to say
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    reason: str
    error: type[SwitchyardError] = Refused
    event: Event | None = None  # a refusal worth a history line


@dataclass
class Made:
    """What the steps of a run have made so far: the candidate, a router, the retired slot."""

    candidate: Instance | None = None
    router: Router | None = None
    stopped: int = 0  # processes a down stopped
    notes: list[str] = field(default_factory=list)


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


def leaves(step: Step, facts: Facts, made: Made) -> Facts:
    """The facts ``step`` leaves behind: the journal entry before it runs; for a commit, the new facts."""
    if step.name in JOURNALED:
        assert step.color is not None and step.version is not None
        # The instance the step acts on: one this run started, else the slot's (a flip, a reused
        # instance; while a new one starts, the old one it replaces, which repair must not stop).
        candidate = made.candidate or facts.slots.get(step.color)
        if step.name == "flip":
            candidate = facts.slots.get(step.color, candidate)
        return facts.replace(op=Op(step.action, step.color, step.version, step.name, candidate, step.forced))
    if step.name != "commit":
        return facts
    if step.action == "up":
        assert made.candidate is not None and made.router is not None
        return Facts(name=facts.name, active="blue", slots={"blue": made.candidate}, router=made.router)
    if step.action == "stage":
        assert step.color is not None
        slot = made.candidate or facts.slots[step.color]
        return facts.replace(
            slots={**facts.slots, step.color: slot}, staged=step.color, previous=None, op=None, shadow=step.shadow
        )
    if step.action == "down":
        return Facts()
    if step.action == "canary":
        return facts.replace(rollout=step.rollout, shadow=None, op=None)
    if step.action in ("abort", "watch"):
        return facts.replace(rollout=None, op=None)  # an aborted canary stays staged, out of traffic
    if step.action == "heal":
        assert step.color is not None and made.candidate is not None
        return facts.replace(slots={**facts.slots, step.color: made.candidate}, op=None)
    if step.parked:  # the failed version keeps its slot, staged and out of traffic; nothing to roll back to
        return facts.replace(active=step.color, previous=None, staged=facts.active, op=None, shadow=None, rollout=None)
    return facts.replace(
        active=step.color, previous=facts.active, staged=None, op=None, shadow=None, rollout=step.rollout
    )
