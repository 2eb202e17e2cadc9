"""The narrow interfaces between the controller's logic and the world, besides the backend
(:mod:`controller.drivers.backends.base`) and the router drivers (:mod:`controller.drivers.routers.base`).

The real implementations are :class:`controller.drivers.store.SqliteStore`,
:class:`controller.drivers.probes.HttpProbes`, :class:`SystemClock` and :class:`NoHooks`; the tests
drive the same logic through in-memory fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from artifact.manifest import Manifest
from controller.core.facts import Event, Facts, Instance
from controller.drivers.backends.base import Backend
from controller.drivers.probes import Smoke
from controller.drivers.routers.base import RouterDriver


class Store(Protocol):
    def load(self) -> Facts: ...

    def save(self, facts: Facts, *events: Event) -> None:
        """The new facts and their history lines, in one transaction."""
        ...

    def record(self, event: Event) -> None:
        """One history line, leaving the facts as they are."""
        ...

    def history(self, limit: int | None = None) -> list[dict[str, Any]]: ...


class Probes(Protocol):
    """What the controller asks a running instance over HTTP."""

    def readiness(self, instance: Instance, manifest: Manifest) -> str | None:
        """None if the instance is ready and serves exactly ``manifest``; otherwise why not. A reason
        that contains "expected" is a wrong identity, which waiting does not cure."""
        ...

    def smoke(self, instance: Instance, manifest: Manifest) -> Smoke:
        """The manifest's golden rows through the instance's API: a summary and the score, or CheckFailed."""
        ...

    def paired_latency(self, candidate: Instance, live: Instance, manifest: Manifest) -> list[tuple[float, float]]:
        """(candidate, live) seconds of the same one-row request, each pair sent back to back."""
        ...

    def router_connections(self, instance: Instance) -> int | None:
        """How many router connections the instance holds; None if it does not answer."""
        ...


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class Hooks(Protocol):
    def before_step(self, step: str) -> None:
        """Called before each step of a plan runs, once its journal entry is written."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class NoHooks:
    def before_step(self, step: str) -> None:
        return None


@dataclass
class Seams:
    """Everything a run touches, injected: the real ones in production, fakes in the logic tests."""

    store: Store
    backend: Backend
    router: RouterDriver
    probes: Probes
    clock: Clock
    hooks: Hooks
    say: Callable[[str], None]
