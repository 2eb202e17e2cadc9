"""nginx in a container as the router: the same config and the same symlink flip as the local nginx
router, with the socket folder bind-mounted into the router and every instance container. The config
is mounted from the run dir, so any image with nginx on its PATH serves (the router image bakes the
same file in for compose)."""

from __future__ import annotations

import uuid
from pathlib import Path

from controller.core.facts import Router
from controller.drivers import docker_client as dc
from controller.drivers.routers.base import wait_listening
from controller.drivers.routers.nginx import SymlinkFlip, SymlinkRouting, render_docker_config
from controller.errors import NeedsOperator
from controller.settings import ControllerSettings

ROUTER_PORT = "80/tcp"


class DockerNginxRouter(SymlinkRouting):
    kind = "docker-nginx"

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.engine = dc.client()
        self.flip = SymlinkFlip(settings.docker_sockets, Path(dc.SOCKETS_IN_CONTAINER))
        self.conf = (settings.run_dir / "docker-nginx" / "nginx.conf").resolve()

    def start(self, upstream: str) -> Router:
        from docker.errors import APIError, ImageNotFound

        settings = self.settings
        dc.ensure_network(self.engine, settings)
        dc.ensure_socket_dir(settings)
        self.flip.swap(upstream)
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render_docker_config())
        try:
            container = self.engine.containers.run(
                settings.docker_router_image,
                command=["nginx", "-c", "/etc/switchyard/nginx.conf"],
                detach=True,
                name=f"{settings.docker_project}-router-{uuid.uuid4().hex[:8]}",
                volumes={
                    str(self.conf): {"bind": "/etc/switchyard/nginx.conf", "mode": "ro"},
                    str(settings.docker_sockets): {"bind": dc.SOCKETS_IN_CONTAINER, "mode": "rw"},
                },
                ports={ROUTER_PORT: (settings.router_host, settings.router_port)},
                network=settings.docker_network,
                # nginx's master needs these to bind port 80 and hand the workers an unprivileged user
                cap_drop=["ALL"],
                cap_add=["CHOWN", "SETUID", "SETGID", "NET_BIND_SERVICE"],
                **dc.hardening(settings.docker_memory, settings.docker_pids),
                labels={"switchyard.project": settings.docker_project, "switchyard.role": "router"},
            )
        except ImageNotFound:
            raise NeedsOperator(f"router image {settings.docker_router_image} not found") from None
        except APIError as exc:
            raise NeedsOperator(f"docker could not start the router: {exc.explanation or exc}") from None
        router = Router(kind=self.kind, host=settings.router_host, port=settings.router_port, handle=container.id)
        wait_listening(router.url, lambda: self.alive(router), 20.0, container.logs(tail=20).decode(errors="replace"))
        return router

    def adopt(self, handle: str) -> Router | None:
        container = dc.get(self.engine, handle)
        if container is None:
            return None
        port = dc.published_port(container, ROUTER_PORT)
        return Router(kind=self.kind, host="127.0.0.1", port=port, handle=container.id)

    def alive(self, router: Router) -> bool:
        container = dc.get(self.engine, router.handle)
        return bool(container is not None and container.attrs["State"].get("Running"))

    def refresh(self, router: Router) -> None:
        return None  # its config is the fixed docker config; flips never change it

    def stop(self, router: Router) -> None:
        dc.remove(self.engine, router.handle, grace=10)

    def stray(self, known: Router | None) -> list[str]:
        return [
            c.id for c in dc.labelled(self.engine, self.settings, "router") if known is None or c.id != known.handle
        ]

    def remove_stray(self, handle: str) -> None:
        dc.remove(self.engine, handle, grace=10)
