"""The controller's facts: what is live, staged and previous, each slot's instance, the router, and the
operation in flight with the step it reached (the journal a crashed command leaves behind).

They are stored whole (:mod:`controller.drivers.store`); the phase is never stored: :mod:`controller.core.phase`
derives it from these facts and from what is observed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from controller.vocabulary import Kind, StepName, Verb


def flipped(facts: Facts, color: str, rollout: Rollout | None, *, parked: bool) -> Facts:
    """What a completed flip to ``color`` leaves, whoever completes it (the commit, or repair after
    a crash): the one definition. The slot that was live becomes the rollback target, unless the
    flip is an automatic rollback, which parks the failed version staged (nothing to roll back to);
    any rollout ends, and the one that follows the flip (a watch) begins."""
    if parked:
        return facts.replace(active=color, previous=None, staged=facts.active, op=None, shadow=None, rollout=None)
    return facts.replace(active=color, previous=facts.active, staged=None, op=None, shadow=None, rollout=rollout)


def other(color: str) -> str:
    return "green" if color == "blue" else "blue"


@dataclass(frozen=True)
class Instance:
    """One running service instance: what a slot holds, or what an operation is starting."""

    color: str
    version: int
    handle: str  # a pid, or a container id
    port: int  # the preview / health address: http://127.0.0.1:<port>
    socket: str  # the router's upstream: a unix socket path
    sha256: str
    started_at: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Op:
    """An operation in flight. Left behind only by a controller that died; the next command repairs it."""

    action: Verb
    color: str
    version: int
    step: StepName  # the journaled step it reached
    candidate: Instance | None = None
    forced: bool = False
    # What a flip's commit needs, so that repair completes an interrupted flip exactly as the commit
    # would have: the rollout that follows it (a watch), and whether it parks the failed version.
    rollout: Rollout | None = None
    parked: bool = False


@dataclass(frozen=True)
class Shadow:
    """The staged candidate gets copies of live requests: this share of them, at most ``rate`` a second."""

    percent: float = 100.0
    rate: float = 100.0


@dataclass(frozen=True)
class Canary:
    """A canary in progress: the new version's slot takes ``steps[step]`` percent of live traffic, and
    the agent moves it on a step at a time while the analysis finds nothing worse."""

    color: str  # the new version's slot
    steps: tuple[int, ...]  # weights in percent; the last is 100
    step: int = 0  # the current one
    step_seconds: float = 60.0  # how long each step lasts at least
    watch_seconds: float = 0.0  # the watch after its last step; 0: none
    started_at: float = 0.0  # when the current step began (wall clock)
    kind: Kind = field(default=Kind.CANARY, init=False)  # stored, so that a reader knows which

    @property
    def weight(self) -> int:
        return self.steps[self.step]

    @property
    def window(self) -> tuple[Kind, str, int, float]:
        """What the analysis of one step compares from: its start (a new step starts a new window)."""
        return (self.kind, self.color, self.step, self.started_at)


@dataclass(frozen=True)
class Watch:
    """The watch after a deploy: the new live slot, compared with the previous one's record."""

    color: str  # the new live slot
    watch_seconds: float
    started_at: float = 0.0  # when the watch began (wall clock)
    kind: Kind = field(default=Kind.WATCH, init=False)

    @property
    def weight(self) -> int:
        return 100

    @property
    def window(self) -> tuple[Kind, str, int, float]:
        return (self.kind, self.color, 0, self.started_at)


Rollout: TypeAlias = Canary | Watch  # what the agent analyses and acts on


@dataclass(frozen=True)
class Router:
    kind: str  # nginx | builtin | docker-nginx
    host: str
    port: int
    handle: str  # pid or container id
    admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Facts:
    name: str | None = None
    active: str | None = None
    staged: str | None = None
    previous: str | None = None
    slots: dict[str, Instance] = field(default_factory=dict)
    router: Router | None = None
    op: Op | None = None
    shadow: Shadow | None = None  # while a candidate is staged with shadow traffic
    rollout: Rollout | None = None  # a canary in progress, or the watch after a deploy

    def replace(self, **changes: Any) -> Facts:
        return dataclasses.replace(self, **changes)

    def slot(self, color: str | None) -> Instance | None:
        return self.slots.get(color) if color else None


@dataclass(frozen=True)
class Event:
    action: Verb
    outcome: str  # ok | failed | refused | repaired
    from_version: int | None = None
    to_version: int | None = None
    step: StepName | None = None
    reason: str = ""
    forced: bool = False


def encode(facts: Facts) -> str:
    return json.dumps(dataclasses.asdict(facts))


def decode(body: str) -> Facts:
    raw = json.loads(body)
    slots = {color: Instance(**slot) for color, slot in raw["slots"].items()}
    router = Router(**raw["router"]) if raw["router"] else None
    op = None
    if raw["op"]:
        op_raw = dict(raw["op"])
        candidate = op_raw.pop("candidate")
        rollout = op_raw.pop("rollout", None)  # older state files have none
        op_raw["action"], op_raw["step"] = Verb(op_raw["action"]), StepName(op_raw["step"])
        op = Op(**op_raw, candidate=Instance(**candidate) if candidate else None, rollout=_rollout(rollout))
    return Facts(
        name=raw["name"],
        active=raw["active"],
        staged=raw["staged"],
        previous=raw["previous"],
        slots=slots,
        router=router,
        op=op,
        shadow=Shadow(**raw["shadow"]) if raw.get("shadow") else None,  # older state files have none
        rollout=_rollout(raw.get("rollout")),
    )


def _rollout(raw: dict[str, Any] | None) -> Rollout | None:
    if not raw:
        return None
    if Kind(raw["kind"]) == Kind.CANARY:
        fields = {k: raw[k] for k in ("color", "step", "step_seconds", "watch_seconds", "started_at")}
        return Canary(**fields, steps=tuple(raw["steps"]))
    # older state files store a watch with a canary's fields as well
    return Watch(raw["color"], raw["watch_seconds"], raw.get("started_at", 0.0))
