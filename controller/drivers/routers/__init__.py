"""The stable address in front of the slots: a real nginx, or a small built-in proxy."""

from __future__ import annotations

from controller.drivers.routers.base import RouterDriver
from controller.settings import ControllerSettings


def make_router(settings: ControllerSettings, kind: str | None = None) -> RouterDriver:
    kind = kind or settings.resolved_router()
    if kind == "nginx":
        from controller.drivers.routers.nginx import NginxRouter

        return NginxRouter(settings)
    if kind == "docker-nginx":
        from controller.drivers.routers.docker_nginx import DockerNginxRouter

        return DockerNginxRouter(settings)
    from controller.drivers.routers.builtin import BuiltinRouter

    return BuiltinRouter(settings)
