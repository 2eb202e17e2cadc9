"""The phase of a deployment, derived (never stored) from its facts and what is observed, and the
table of which commands each phase allows.

Derivation order (first match wins):
1. Progressing: an operation was interrupted (a controller died mid-command); the next command repairs it.
2. Absent: nothing is live.
3. Degraded: the live slot is down or not ready, the router is down or points elsewhere, a staged slot
   is not ready, or stray instances run.
4. Canary: a candidate takes a share of live traffic, step by step.
5. Staged: a checked candidate waits at its preview address.
6. Healthy: the router serves the live slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from controller import messages
from controller.core.facts import Canary, Facts


class Phase(StrEnum):
    ABSENT = "Absent"
    HEALTHY = "Healthy"
    STAGED = "Staged"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    CANARY = "Canary"


@dataclass(frozen=True)
class Observed:
    ready: dict[str, bool] = field(default_factory=dict)  # color -> ready and the right identity
    alive: dict[str, bool] = field(default_factory=dict)  # color -> process/container exists
    problems: dict[str, str] = field(default_factory=dict)  # color -> why it is not ready
    router_alive: bool = False
    router_target: str | None = None  # the socket path the router sends traffic to
    stray_instances: tuple[str, ...] = ()  # handles of instances of this deployment no fact accounts for
    stray_routers: tuple[str, ...] = ()  # handles of routers of this deployment no fact accounts for
    port_busy: str | None = None  # "PORT on HOST is in use (who holds it)" when nothing is live and it is taken

    @property
    def strays(self) -> int:
        return len(self.stray_instances) + len(self.stray_routers)


def _describe(facts: Facts, color: str) -> str:
    slot = facts.slot(color)
    return f"{color} ({facts.name} v{slot.version})" if slot else color


def derive_phase(facts: Facts, observed: Observed) -> tuple[Phase, str]:
    if facts.op is not None:
        op = facts.op
        return Phase.PROGRESSING, (
            f"an interrupted {op.action} of v{op.version} into {op.color} (reached step {op.step!r}); "
            "the next command repairs it"
        )
    if facts.active is None or facts.slot(facts.active) is None:
        if observed.strays:
            return Phase.ABSENT, f"nothing is live, but {observed.strays} stray process(es) run: `down` removes them"
        return Phase.ABSENT, "nothing is live"
    live = _describe(facts, facts.active)
    active = facts.slots[facts.active]
    if not observed.alive.get(facts.active):
        return Phase.DEGRADED, f"the live slot {live} is not running"
    if not observed.ready.get(facts.active):
        return Phase.DEGRADED, f"the live slot {live} is not ready"
    if not observed.router_alive:
        return Phase.DEGRADED, "the router is not running"
    if observed.router_target != active.socket:
        return Phase.DEGRADED, f"the router does not point at the live slot {live}"
    if facts.staged and not observed.ready.get(facts.staged):
        return Phase.DEGRADED, f"the staged slot {_describe(facts, facts.staged)} is not ready"
    if observed.strays:
        return Phase.DEGRADED, f"{observed.strays} stray process(es) run that no slot accounts for"
    rollout = facts.rollout
    if isinstance(rollout, Canary):
        return Phase.CANARY, (
            f"{_describe(facts, rollout.color)} takes {rollout.weight}% of live traffic (step {rollout.step + 1} "
            f"of {len(rollout.steps)}); {live} takes the rest"
        )
    if facts.staged:
        return Phase.STAGED, f"{_describe(facts, facts.staged)} is staged; {live} is live"
    reason = f"{live} is live"
    if facts.previous and observed.ready.get(facts.previous):
        reason += f"; {_describe(facts, facts.previous)} is the rollback target"
    elif facts.previous:
        reason += f"; the rollback target {_describe(facts, facts.previous)} is not ready"
    return Phase.HEALTHY, reason


COMMANDS = (
    "up",
    "stage",
    "promote",
    "promote VERSION",
    "rollback",
    "abort",
    "advance",
    "conclude",
    "heal",
    "status",
    "history",
    "down",
)
READ_ONLY = frozenset({"status", "history"})

ALLOWED: dict[Phase, frozenset[str]] = {
    Phase.ABSENT: frozenset({"up", "status", "history", "down", "heal"}),
    Phase.HEALTHY: frozenset(COMMANDS) - {"promote", "advance"},
    Phase.STAGED: frozenset(COMMANDS) - {"advance"},
    Phase.CANARY: frozenset(COMMANDS) - {"stage", "promote VERSION", "conclude"},
    Phase.DEGRADED: frozenset(COMMANDS),  # each command repairs what it can before it acts
    Phase.PROGRESSING: frozenset({"status", "history", "down"}),  # the others repair first, then re-check
}

HINTS: dict[tuple[Phase, str], str] = {
    (Phase.ABSENT, "stage"): messages.NOTHING_LIVE(),
    (Phase.ABSENT, "promote"): messages.NOTHING_LIVE(),
    (Phase.ABSENT, "promote VERSION"): messages.NOTHING_LIVE(),
    (Phase.ABSENT, "rollback"): messages.NOTHING_TO_ROLL_BACK(),
    (Phase.HEALTHY, "promote"): messages.NOTHING_STAGED(),
    (Phase.CANARY, "stage"): messages.CANARY_IN_PROGRESS(),
    (Phase.CANARY, "promote VERSION"): messages.CANARY_COMPLETES_FIRST(),
}


def refusal(phase: Phase, command: str) -> str | None:
    """None if ``command`` is allowed in ``phase``; otherwise why not and what is allowed now."""
    if command in ALLOWED[phase]:
        return None
    hint = HINTS.get((phase, command), f"not allowed while {phase}")
    allowed = ", ".join(c for c in COMMANDS if c in ALLOWED[phase])
    return messages.NOT_ALLOWED_NOW(command=command, hint=hint, allowed=allowed)
