"""The narrow interface between the controller and wherever instances run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.core.facts import Instance


@dataclass(frozen=True)
class Found:
    """An instance of this deployment that the backend sees running, whatever the state says."""

    handle: str
    color: str
    version: int


class Backend(Protocol):
    kind: str

    def start(self, *, color: str, version: int, model_dir: Path, sha256: str) -> Instance:
        """Start an instance serving ``model_dir``; it is not ready yet when this returns."""
        ...

    def stop(self, handle: str) -> None:
        """Stop it gracefully (in-flight requests finish). Idempotent."""
        ...

    def alive(self, handle: str) -> bool: ...

    def close_router_connections(self, handle: str) -> None:
        """Ask the instance to close the router's pooled connections to it (SIGUSR1)."""
        ...

    def exit_code(self, handle: str) -> int | None:
        """The exit code if it has exited and the backend knows it."""
        ...

    def logs(self, handle: str, lines: int = 12) -> str: ...

    def adopt(self, found: Found, sha256: str) -> Instance | None:
        """An instance started outside the controller (docker compose), as a record; None if unsupported."""
        ...

    def running(self) -> list[Found]:
        """Every instance of this deployment that exists now (the source of truth for orphans)."""
        ...
