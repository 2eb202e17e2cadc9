"""The narrow interface of a router. An upstream is an instance's unix socket path."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import httpx

from builtin_router import HEALTH_PATH
from controller.core.facts import Router
from controller.drivers import host, loopback
from controller.errors import NeedsOperator


class RouterDriver(Protocol):
    kind: str

    def start(self, upstream: str) -> Router:
        """Start the router on the configured address, sending traffic to ``upstream``."""
        ...

    def point_to(self, router: Router, upstream: str) -> None:
        """Send new requests to ``upstream``. Idempotent; in-flight requests finish where they are."""
        ...

    def current(self, router: Router) -> str | None:
        """The stable upstream actually in effect, or None if the router is not running."""
        ...

    def split(self, router: Router, stable: str, canary: str, percent: int) -> bool:
        """Send ``percent``% of new requests to ``canary`` and the rest to ``stable``. Idempotent. True
        if pooled connections may now lead to the wrong slot (the slot that lost share must close them)."""
        ...

    def shares(self, router: Router) -> dict[str, int]:
        """Each upstream's share of new requests in percent, as the router has it ({} if it is down)."""
        ...

    def alive(self, router: Router) -> bool: ...

    def refresh(self, router: Router) -> None:
        """Bring a running router's own configuration up to date (not a flip)."""
        ...

    def stop(self, router: Router) -> None: ...

    def stray(self, known: Router | None) -> list[str]:
        """Handles of router processes of this deployment that ``known`` does not account for."""
        ...

    def remove_stray(self, handle: str) -> None: ...

    def adopt(self, handle: str) -> Router | None:
        """A router started outside the controller (docker compose), as a record; None if unsupported."""
        ...


def stray_from_pid_file(pid_file: Path, known: Router | None) -> list[str]:
    """A router that a crashed ``up`` started but never recorded is found through its pid file."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return []
    handle = host.handle_of(pid)
    if not host.alive(handle) or (known is not None and known.handle == handle):
        return []
    return [handle]


def wait_listening(url: str, alive: object, timeout: float, log: str) -> None:
    """Wait until the router answers its own health path; fail early if its process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise NeedsOperator(f"the router exited while starting; its log says:\n{log}")
        try:
            if loopback.client().get(url + HEALTH_PATH, timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.03)
    raise NeedsOperator(f"the router did not answer at {url} within {timeout:.0f}s")
