"""The controller's facts: what is live, staged and previous, each slot's instance, the router, and the
operation in flight with the step it reached (the journal a crashed command leaves behind).

They are stored whole (:mod:`controller.store`); the phase is never stored: :mod:`controller.phase`
derives it from these facts and from what is observed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any


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

    action: str  # stage | promote | rollback | up
    color: str
    version: int
    step: str  # the journaled step it reached: start | ready | smoke | gate | router | flip
    candidate: Instance | None = None
    forced: bool = False


@dataclass(frozen=True)
class Shadow:
    """The staged candidate gets copies of live requests: this share of them, at most ``rate`` a second."""

    percent: float = 100.0
    rate: float = 100.0


@dataclass(frozen=True)
class Rollout:
    """A canary in progress, or the watch after a deploy: what the agent analyses and acts on."""

    kind: str  # canary | watch
    color: str  # the new version's slot: the canary's, or (watching) the new live one
    started_at: float = 0.0  # when the current canary step, or the watch, began (wall clock)
    steps: tuple[int, ...] = ()  # canary weights in percent; the last is 100
    step: int = 0  # the current canary step
    step_seconds: float = 60.0
    watch_seconds: float = 0.0  # the watch after the deploy; 0: none

    @property
    def weight(self) -> int:
        return self.steps[self.step] if self.kind == "canary" else 100


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
    action: str
    outcome: str  # ok | failed | refused | repaired
    from_version: int | None = None
    to_version: int | None = None
    step: str | None = None
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
        op = Op(**op_raw, candidate=Instance(**candidate) if candidate else None)
    return Facts(
        name=raw["name"],
        active=raw["active"],
        staged=raw["staged"],
        previous=raw["previous"],
        slots=slots,
        router=router,
        op=op,
        shadow=Shadow(**raw["shadow"]) if raw.get("shadow") else None,  # older state files have none
        rollout=Rollout(**{**raw["rollout"], "steps": tuple(raw["rollout"]["steps"])}) if raw.get("rollout") else None,
    )
