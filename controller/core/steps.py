"""The vocabulary of a plan: the command asked for, the steps a plan is made of, what a run has made
so far, and :func:`leaves`, which says for each step the facts it leaves behind: the journal entry
written before it runs, and for a commit step the new facts. The planner (:mod:`controller.core.planner`)
writes plans in these words, the runner (:mod:`controller.run.runner`) carries them out, and repair
reads the journal they leave.

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

from dataclasses import dataclass, field

from controller.core.facts import Event, Facts, Instance, Op, Rollout, Router, Shadow, flipped
from controller.errors import Refused, SwitchyardError
from controller.vocabulary import StepName, Verb

JOURNALED = frozenset(
    {
        StepName.START,
        StepName.READY,
        StepName.SMOKE,
        StepName.GATE,
        StepName.EVIDENCE,
        StepName.SPEED,
        StepName.ROUTER,
        StepName.FLIP,
    }
)


@dataclass(frozen=True)
class Command:
    name: Verb
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
        return "promote VERSION" if self.name == Verb.PROMOTE and self.version is not None else self.name


@dataclass(frozen=True)
class Step:
    name: StepName
    action: Verb  # the history action it belongs to
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


def leaves(step: Step, facts: Facts, made: Made) -> Facts:
    """The facts ``step`` leaves behind: the journal entry before it runs; for a commit, the new facts."""
    if step.name in JOURNALED:
        assert step.color is not None and step.version is not None
        # The instance the step acts on: one this run started, else the slot's (a flip, a reused
        # instance; while a new one starts, the old one it replaces, which repair must not stop).
        candidate = made.candidate or facts.slots.get(step.color)
        if step.name == StepName.FLIP:
            candidate = facts.slots.get(step.color, candidate)
        op = Op(step.action, step.color, step.version, step.name, candidate, step.forced, step.rollout, step.parked)
        return facts.replace(op=op)
    if step.name != StepName.COMMIT:
        return facts
    if step.action == Verb.UP:
        assert made.candidate is not None and made.router is not None
        return Facts(name=facts.name, active="blue", slots={"blue": made.candidate}, router=made.router)
    if step.action == Verb.STAGE:
        assert step.color is not None
        slot = made.candidate or facts.slots[step.color]
        return facts.replace(
            slots={**facts.slots, step.color: slot}, staged=step.color, previous=None, op=None, shadow=step.shadow
        )
    if step.action == Verb.DOWN:
        return Facts()
    if step.action == Verb.CANARY:
        return facts.replace(rollout=step.rollout, shadow=None, op=None)
    if step.action in (Verb.ABORT, Verb.WATCH):
        return facts.replace(rollout=None, op=None)  # an aborted canary stays staged, out of traffic
    if step.action == Verb.HEAL:
        assert step.color is not None and made.candidate is not None
        return facts.replace(slots={**facts.slots, step.color: made.candidate}, op=None)
    assert step.color is not None
    return flipped(facts, step.color, step.rollout, parked=step.parked)
