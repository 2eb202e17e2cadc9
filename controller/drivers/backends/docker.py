"""Instances as Docker containers, from one service image; models/ mounted read-only.

Docker is the source of truth for what runs: containers carry labels (project, role, color, model,
version), so ``running()`` finds every instance of this deployment, including ones `docker compose`
started, and ones a crashed controller never recorded.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

from controller.core.facts import Instance
from controller.drivers import docker_client as dc
from controller.drivers import host, shadow
from controller.drivers.backends.base import Found
from controller.errors import NeedsOperator
from controller.settings import ControllerSettings

SERVICE_PORT = "8001/tcp"
KEYS_IN_CONTAINER = "/keys"
SHADOW_IN_CONTAINER = "/shadow"


class DockerBackend:
    kind = "docker"

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.engine = dc.client()

    def start(self, *, color: str, version: int, model_dir: Path, sha256: str) -> Instance:
        from docker.errors import APIError, ImageNotFound

        settings = self.settings
        dc.ensure_network(self.engine, settings)
        dc.ensure_socket_dir(settings)
        nonce = uuid.uuid4().hex[:8]
        socket = f"{dc.SOCKETS_IN_CONTAINER}/{color}-{nonce}.sock"
        models_root = model_dir.resolve().parent.parent
        try:
            container = self.engine.containers.run(
                settings.docker_image,
                detach=True,
                name=f"{settings.docker_project}-{color}-v{version}-{nonce}",
                environment={
                    "SWITCHYARD_MODEL": f"/models/{model_dir.parent.name}/{model_dir.name}",
                    "SWITCHYARD_UDS": socket,
                    "SWITCHYARD_WORKERS": str(settings.instance_workers),
                    "SWITCHYARD_CPU_AFFINITY": settings.cpu_affinity(color),
                    "SWITCHYARD_TRUSTED_KEYS": KEYS_IN_CONTAINER,
                    "SWITCHYARD_ALLOW_UNSIGNED": str(settings.allow_unsigned).lower(),
                    "SWITCHYARD_TRUSTED_MODULES": settings.trusted_modules,
                    "SWITCHYARD_SHADOW_DIR": SHADOW_IN_CONTAINER,
                },
                volumes={
                    str(models_root): {"bind": "/models", "mode": "ro"},
                    str(settings.trusted_keys.resolve()): {"bind": KEYS_IN_CONTAINER, "mode": "ro"},
                    str(settings.docker_sockets): {"bind": dc.SOCKETS_IN_CONTAINER, "mode": "rw"},
                    str(shadow.ensure_folder(settings)): {"bind": SHADOW_IN_CONTAINER, "mode": "rw"},
                },
                ports={SERVICE_PORT: ("127.0.0.1", None)},
                network=settings.docker_network,
                user=":".join(map(str, host.container_user())),
                cap_drop=["ALL"],
                read_only=True,
                tmpfs={"/tmp": "size=64m,mode=1777"},
                **dc.hardening(settings.docker_memory, settings.docker_pids),
                labels={
                    "switchyard.project": settings.docker_project,
                    "switchyard.role": "instance",
                    "switchyard.color": color,
                    "switchyard.model": model_dir.parent.name,
                    "switchyard.version": str(version),
                },
            )
        except ImageNotFound:
            raise NeedsOperator(
                f"image {settings.docker_image} not found; build it with scripts/build-images"
            ) from None
        except APIError as exc:
            raise NeedsOperator(f"docker could not start the instance: {exc.explanation or exc}") from None
        return Instance(
            color=color,
            version=version,
            handle=container.id,
            port=dc.published_port(container, SERVICE_PORT),
            socket=socket,
            sha256=sha256,
        )

    def adopt(self, found: Found, sha256: str) -> Instance:
        container = dc.get(self.engine, found.handle)
        if container is None:
            raise NeedsOperator(f"container {found.handle[:12]} vanished")
        env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"] if "=" in item)
        return Instance(
            color=found.color,
            version=found.version,
            handle=container.id,
            port=dc.published_port(container, SERVICE_PORT),
            socket=env["SWITCHYARD_UDS"],
            sha256=sha256,
        )

    def _state(self, handle: str) -> dict[str, Any] | None:
        container = dc.get(self.engine, handle)
        return container.attrs["State"] if container is not None else None

    def stop(self, handle: str) -> None:
        dc.remove(self.engine, handle)
        if not dc.labelled(self.engine, self.settings, "instance") and not dc.labelled(
            self.engine, self.settings, "router"
        ):
            dc.remove_network_if_unused(self.engine, self.settings)

    def close_router_connections(self, handle: str) -> None:
        from docker.errors import APIError

        container = dc.get(self.engine, handle)
        if container is not None and self.alive(handle):
            with contextlib.suppress(APIError):  # it stopped meanwhile: its connections are gone anyway
                container.kill(signal="SIGUSR1")

    def alive(self, handle: str) -> bool:
        state = self._state(handle)
        return bool(state and state.get("Running"))

    def exit_code(self, handle: str) -> int | None:
        state = self._state(handle)
        if state is None or state.get("Running"):
            return None
        return int(state.get("ExitCode", 0))

    def logs(self, handle: str, lines: int = 12) -> str:
        container = dc.get(self.engine, handle)
        if container is None:
            return "(container removed)"
        return host.last_lines(container.logs(tail=200).decode(errors="replace"), lines)

    def running(self) -> list[Found]:
        return [
            Found(
                handle=c.id,
                color=c.labels.get("switchyard.color", "?"),
                version=int(c.labels.get("switchyard.version", "0")),
            )
            for c in dc.labelled(self.engine, self.settings, "instance")
        ]
