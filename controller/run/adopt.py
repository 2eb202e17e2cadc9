"""Adoption: take over a deployment that runs but that no facts record: one started outside the
controller (``docker compose up``), or one whose state file was lost or moved aside as unreadable.
Its router and instances become this deployment's facts, after the same readiness and smoke checks a
release gets. Docker describes its containers through their labels; a local process through its own
command line (its port and socket), found by the tag in its environment or the router's pid file."""

from __future__ import annotations

from collections.abc import Callable

from artifact.manifest import Manifest
from controller.core.facts import Event, Facts
from controller.drivers.seams import Seams
from controller.errors import UsageError
from controller.run import checks
from controller.vocabulary import Verb

ManifestOf = Callable[[int], Manifest]


def adopt(name: str, version: int, manifest_of: ManifestOf, seams: Seams, ready_timeout: float) -> str | None:
    """The message of a successful adoption, or None when there is nothing (or nothing adoptable) to take.

    One router and one or two instances: the one the router sends traffic to is live (with one
    instance, it is live and the router is pointed at it), the other is the rollback target."""
    routers = seams.router.stray(None)
    found = [f for f in seams.backend.running() if seams.backend.alive(f.handle)]
    if len(routers) != 1 or len(found) not in (1, 2) or len({f.color for f in found}) != len(found):
        return None
    router = seams.router.adopt(routers[0])
    instances = [seams.backend.adopt(f, manifest_of(f.version).artifact.sha256) for f in found]
    if router is None or None in instances:
        return None
    slots = {i.color: i for i in instances if i is not None}
    target = seams.router.current(router)
    live = (
        next((i for i in slots.values() if i.socket == target), None) if len(slots) == 2 else next(iter(slots.values()))
    )
    if live is None:
        return None
    if live.version != version:
        raise UsageError(
            f"the running deployment serves v{live.version} ({live.color}), not v{version}: "
            f"run `up {name} {live.version}` to adopt it, or `down` first"
        )
    seams.say(f"up: adopting the running {live.color} instance (v{version}), its router and what else runs")
    manifest = manifest_of(version)
    seams.say(f"up: {checks.wait_ready(seams.backend, seams.probes, seams.clock, live, manifest, ready_timeout)}")
    seams.say(f"up: smoke: {seams.probes.smoke(live, manifest)}")
    seams.router.point_to(router, live.socket)
    other = next((color for color in slots if color != live.color), None)
    done = Facts(name=name, active=live.color, previous=other, slots=slots, router=router)
    seams.store.save(
        done, Event(Verb.UP, "ok", None, version, reason=f"adopted the running deployment at {router.url}")
    )
    extra = f"; v{slots[other].version} ({other}) is the rollback target" if other else ""
    return f"up: adopted {name} v{version}, live at {router.url}/predict (router: {seams.router.kind}){extra}"
