"""Adoption: take over a deployment started outside the controller (``docker compose up``). Its router
and its one instance become this deployment's facts, after the same readiness and smoke checks a
release gets. Only a backend and router that can describe what they did not start can adopt
(Docker, through its labels); for local processes there is nothing to adopt."""

from __future__ import annotations

from artifact.manifest import Manifest
from controller import checks
from controller.errors import UsageError
from controller.facts import Event, Facts
from controller.seams import Seams


def adopt(name: str, version: int, manifest: Manifest, seams: Seams, ready_timeout: float) -> str | None:
    """The message of a successful adoption, or None when there is nothing (or nothing adoptable) to take."""
    routers = seams.router.stray(None)
    found = [f for f in seams.backend.running() if seams.backend.alive(f.handle)]
    if len(routers) != 1 or len(found) != 1:
        return None
    if found[0].version != version:
        raise UsageError(
            f"a running {found[0].color} instance serves v{found[0].version}, not v{version}: "
            f"run `up {name} {found[0].version}` to adopt it, or `down` first"
        )
    instance = seams.backend.adopt(found[0], manifest.artifact.sha256)
    router = seams.router.adopt(routers[0])
    if instance is None or router is None:
        return None
    seams.say(f"up: adopting the running {instance.color} instance (v{version}) and its router")
    seams.say(f"up: {checks.wait_ready(seams.backend, seams.probes, seams.clock, instance, manifest, ready_timeout)}")
    seams.say(f"up: smoke: {seams.probes.smoke(instance, manifest)}")
    seams.router.point_to(router, instance.socket)
    done = Facts(name=name, active=instance.color, slots={instance.color: instance}, router=router)
    seams.store.save(done, Event("up", "ok", None, version, reason=f"adopted the running deployment at {router.url}"))
    return f"up: adopted {name} v{version}, live at {router.url}/predict (router: {seams.router.kind})"
