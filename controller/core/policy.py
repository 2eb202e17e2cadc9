"""The agent's policy: a pure function from what it saw at one look to what it does.

The agent process (:mod:`controller.agent`) only gathers the observations (the facts, which
processes live, the two slots' metrics since the rollout's step began) and carries the action out
as an ordinary command; every branch of the decision is here, tested on recorded observations
without a process (``tests/unit/test_policy.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.core import analysis
from controller.core.facts import Canary, Facts, Rollout
from controller.settings import ControllerSettings
from controller.vocabulary import Verb

HEAL, ABORT, ROLLBACK, ADVANCE, CONCLUDE = Verb.HEAL, Verb.ABORT, Verb.ROLLBACK, Verb.ADVANCE, Verb.CONCLUDE
WAIT = "wait"


@dataclass(frozen=True)
class Seen:
    """What the agent observed at one look."""

    now: float  # wall clock
    broken: bool = False  # the router or the live instance is dead
    canary_alive: bool = True
    new: analysis.Sample | None = None  # the new slot since the step (or the watch) began
    old: analysis.Sample | None = None  # the old slot over the same window (canary) or its record (watch)
    blocks: tuple[analysis.Sample, ...] | None = None  # the new slot's requests, second by second


@dataclass(frozen=True)
class Action:
    command: str  # a Verb the agent carries out (HEAL ... CONCLUDE), or WAIT
    reason: str = ""
    automatic: bool = True


def decide(facts: Facts, seen: Seen, settings: ControllerSettings) -> Action:
    if facts.op is not None or facts.active is None:
        return Action(WAIT, "a command is running, or one died: the next command repairs first")
    if settings.supervise and seen.broken:
        return Action(HEAL, "the router or the live instance is not running")
    rollout = facts.rollout
    if rollout is None:
        return Action(WAIT, "nothing to analyse")
    canary = isinstance(rollout, Canary)
    where = _where(rollout)
    if canary and not seen.canary_alive:
        return Action(ABORT, f"automatic rollback: the canary is not running ({where})")
    if seen.new is None:
        return Action(WAIT, "no metrics from the new slot this time")
    elapsed = seen.now - rollout.started_at
    verdict = analysis.judge(
        seen.new,
        seen.old,
        settings,
        concurrent=canary,
        weight=rollout.weight / 100 if canary else None,
        seconds=elapsed,
        blocks=seen.blocks,
    )
    if verdict.breach is not None:
        if canary:
            return Action(ABORT, f"automatic rollback: {verdict.breach} ({where})")
        return Action(ROLLBACK, f"automatic rollback: {verdict.breach} ({elapsed:.0f} s into the watch)")
    if isinstance(rollout, Canary) and elapsed >= rollout.step_seconds:
        if verdict.mismatch is not None:
            return Action(WAIT, verdict.mismatch)
        if verdict.enough:
            return Action(ADVANCE, f"analysis passed at {rollout.weight}%: {verdict.summary}")
        return Action(WAIT, verdict.summary)
    if not canary and elapsed >= rollout.watch_seconds:
        outcome = "passed" if verdict.enough else "ended without a verdict"
        return Action(CONCLUDE, f"watch {outcome} after {elapsed:.0f} s: {verdict.summary}")
    return Action(WAIT, verdict.summary)


def _where(rollout: Rollout) -> str:
    if isinstance(rollout, Canary):
        return f"step {rollout.step + 1} of {len(rollout.steps)}, {rollout.weight}% of traffic"
    return "the watch"
