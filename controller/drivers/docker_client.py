"""The Docker engine, reached through the docker SDK; its errors become the controller's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.drivers import host
from controller.errors import NeedsOperator
from controller.settings import ControllerSettings

SOCKETS_IN_CONTAINER = "/run/switchyard"


def client() -> Any:
    from docker.errors import DockerException

    import docker

    try:
        engine = docker.from_env(timeout=30)
        engine.ping()
    except DockerException as exc:
        raise NeedsOperator(f"no Docker engine answers: {exc}") from None
    return engine


def ensure_network(engine: Any, settings: ControllerSettings) -> None:
    from docker.errors import NotFound

    try:
        engine.networks.get(settings.docker_network)
    except NotFound:
        engine.networks.create(
            settings.docker_network, driver="bridge", labels={"switchyard.project": settings.docker_project}
        )


def ensure_socket_dir(settings: ControllerSettings) -> Path:
    """The services' user creates its socket here; the router container's workers reach it (0755)."""
    return host.shared_folder(settings.docker_sockets, 0o755)


def hardening(memory: str, pids: int) -> dict[str, Any]:
    """Options every Switchyard container runs with: no privilege escalation, bounded memory and
    processes (a fork bomb or a leak stays inside it)."""
    return {"security_opt": ["no-new-privileges:true"], "mem_limit": memory, "pids_limit": pids}


def published_port(container: Any, private: str) -> int:
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"].get(private) or []
    if not bindings:
        raise NeedsOperator(f"container {container.name} publishes no port for {private}")
    return int(bindings[0]["HostPort"])


def labelled(engine: Any, settings: ControllerSettings, role: str) -> list[Any]:
    return list(
        engine.containers.list(
            all=True, filters={"label": [f"switchyard.project={settings.docker_project}", f"switchyard.role={role}"]}
        )
    )


def get(engine: Any, handle: str) -> Any | None:
    from docker.errors import NotFound

    try:
        return engine.containers.get(handle)
    except NotFound:
        return None


def remove(engine: Any, handle: str, *, grace: int = 15) -> None:
    """Stop gracefully (SIGTERM, in-flight requests finish), then remove. Idempotent."""
    from docker.errors import APIError, NotFound

    container = get(engine, handle)
    if container is None:
        return
    try:
        container.stop(timeout=grace)
        container.remove(force=True)
    except NotFound:
        return
    except APIError as exc:
        raise NeedsOperator(f"cannot remove container {container.name}: {exc.explanation or exc}") from None


def remove_network_if_unused(engine: Any, settings: ControllerSettings) -> None:
    """The network this backend created (it carries our label), once no container uses it: `down`
    leaves nothing behind. A network someone else made (compose's) is theirs to remove."""
    from docker.errors import APIError, NotFound

    try:
        network = engine.networks.get(settings.docker_network)
        network.reload()
        ours = (network.attrs.get("Labels") or {}).get("switchyard.project") == settings.docker_project
        if ours and not network.attrs.get("Containers"):
            network.remove()
    except (NotFound, APIError):
        return  # gone already, or in use after all
