"""Where instances run: local processes (the embedded default) or Docker containers."""

from __future__ import annotations

from controller.drivers.backends.base import Backend
from controller.settings import ControllerSettings


def make_backend(settings: ControllerSettings) -> Backend:
    if settings.backend == "docker":
        from controller.drivers.backends.docker import DockerBackend

        return DockerBackend(settings)
    from controller.drivers.backends.process import ProcessBackend

    return ProcessBackend(settings)
