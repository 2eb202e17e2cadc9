"""In-memory fakes of the controller's seams, for fast, exhaustive tests of its logic. The real parts
(processes, nginx, Docker, SQLite, HTTP) are proven by the user stories in test_release.py and
test_docker.py; these only have to behave like them from the controller's side."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifact.manifest import Manifest
from controller.core.facts import Event, Facts, Instance, Router
from controller.drivers.backends.base import Found
from controller.drivers.probes import Smoke
from controller.errors import CheckFailed


class FakeBackend:
    kind = "fake"

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.alive_handles: set[str] = set()
        self.calls: list[tuple[str, ...]] = []
        self._ids = itertools.count(1)

    def start(self, *, color: str, version: int, model_dir: Path, sha256: str) -> Instance:
        n = next(self._ids)
        instance = Instance(color, version, f"h{n}", 9000 + n, f"/s/{color}-{n}.sock", sha256, started_at=0.0)
        self.instances[instance.handle] = instance
        self.alive_handles.add(instance.handle)
        self.calls.append(("start", color, str(version)))
        return instance

    def stop(self, handle: str) -> None:
        self.calls.append(("stop", handle))
        self.alive_handles.discard(handle)

    def kill(self, handle: str) -> None:
        """What kill -9 of an instance does."""
        self.alive_handles.discard(handle)

    def alive(self, handle: str) -> bool:
        return handle in self.alive_handles

    def close_router_connections(self, handle: str) -> None:
        self.calls.append(("retire", handle))

    def exit_code(self, handle: str) -> int | None:
        return None if self.alive(handle) else 3

    def logs(self, handle: str, lines: int = 12) -> str:
        return f"(log of {handle})"

    def adopt(self, found: Found, sha256: str) -> Instance | None:
        return None

    def running(self) -> list[Found]:
        return [Found(h, self.instances[h].color, self.instances[h].version) for h in sorted(self.alive_handles)]


class FakeRouter:
    kind = "fake"

    def __init__(self) -> None:
        self.upstream: str | None = None
        self.canary: tuple[str, int] | None = None
        self.running: set[str] = set()
        self.calls: list[tuple[str, ...]] = []
        self.refuse_flips = False  # a router that answers but does not take a flip
        self._ids = itertools.count(1)

    def start(self, upstream: str) -> Router:
        handle = f"r{next(self._ids)}"
        self.running.add(handle)
        self.upstream = upstream
        self.calls.append(("start", upstream))
        return Router(self.kind, "127.0.0.1", 8000, handle)

    def point_to(self, router: Router, upstream: str) -> None:
        self.calls.append(("point_to", upstream))
        if not self.refuse_flips:
            self.upstream = upstream
            self.canary = None

    def split(self, router: Router, stable: str, canary: str, percent: int) -> bool:
        self.calls.append(("split", stable, canary, str(percent)))
        self.upstream, self.canary = stable, (canary, percent)
        return True

    def shares(self, router: Router) -> dict[str, int]:
        if router.handle not in self.running or self.upstream is None:
            return {}
        if self.canary is None or self.canary[1] == 0:
            return {self.upstream: 100}
        return {self.upstream: 100 - self.canary[1], self.canary[0]: self.canary[1]}

    def current(self, router: Router) -> str | None:
        return self.upstream if router.handle in self.running else None

    def alive(self, router: Router) -> bool:
        return router.handle in self.running

    def refresh(self, router: Router) -> None:
        return None

    def stop(self, router: Router) -> None:
        self.calls.append(("stop", router.handle))
        self.running.discard(router.handle)

    def stray(self, known: Router | None) -> list[str]:
        return sorted(h for h in self.running if known is None or h != known.handle)

    def remove_stray(self, handle: str) -> None:
        self.calls.append(("stop", handle))
        self.running.discard(handle)

    def adopt(self, handle: str) -> Router | None:
        return None


@dataclass
class FakeProbes:
    backend: FakeBackend
    never_ready: set[int] = field(default_factory=set)  # versions whose instances never become ready
    failing_smoke: set[int] = field(default_factory=set)
    wrong: dict[int, int] = field(default_factory=dict)  # version -> golden rows it gets wrong
    seconds: dict[int, float] = field(default_factory=dict)  # version -> latency of a one-row request

    def readiness(self, instance: Instance, manifest: Manifest) -> str | None:
        if not self.backend.alive(instance.handle):
            return "no answer (ConnectError)"
        if instance.version != manifest.version:
            return f"it serves v{instance.version}, expected v{manifest.version}"
        return "/readyz answered 503" if instance.version in self.never_ready else None

    def smoke(self, instance: Instance, manifest: Manifest) -> Smoke:
        if instance.version in self.failing_smoke:
            raise CheckFailed("smoke", "1 of 6 golden rows differ from training time")
        rows = len(manifest.golden)
        right = round(rows * manifest.metrics["holdout"]["accuracy"]) - self.wrong.get(instance.version, 0)
        return Smoke(f"{rows} golden rows answered as at training time", rows, max(0, right))

    def paired_latency(self, candidate: Instance, live: Instance, manifest: Manifest) -> list[tuple[float, float]]:
        return [(self.seconds.get(candidate.version, 0.001), self.seconds.get(live.version, 0.001))] * 40

    def router_connections(self, instance: Instance) -> int | None:
        return 0 if self.backend.alive(instance.handle) else None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return 1_800_000_000.0 + self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class MemoryStore:
    def __init__(self) -> None:
        self.facts = Facts()
        self.events: list[Event] = []
        self.writes = 0

    def load(self) -> Facts:
        return self.facts

    def save(self, facts: Facts, *events: Event) -> None:
        self.facts = facts
        self.events.extend(events)
        self.writes += 1

    def record(self, event: Event) -> None:
        self.events.append(event)

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        rows = [vars(e) | {"at": None} for e in self.events]
        return rows[-limit:] if limit else rows


class Crash(BaseException):
    """The controller process dies here (as with kill -9): nothing after this point runs."""


@dataclass
class CrashAt:
    step: str
    seen: list[str] = field(default_factory=list)

    def before_step(self, step: str) -> None:
        self.seen.append(step)
        if step == self.step:
            raise Crash(step)


class NoCrash:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def before_step(self, step: str) -> None:
        self.seen.append(step)
