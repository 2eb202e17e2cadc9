"""Repair: bring what runs in line with the facts before a command acts.

An operation a crashed command left in the journal is finished or undone by where it stopped: once the
flip is journaled, the router decides (it sends traffic to the candidate: the flip is completed, the
old slot's pooled router connections retired as a normal flip retires them; it does not: the router
is pointed back); before that, the half-started candidate is stopped. Instances and routers of this
deployment that no fact accounts for (started by a command that died before recording them) are
stopped, never leaked. A step that fails in a running command is settled by the same :func:`settle`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from controller import messages
from controller.core.facts import Canary, Event, Facts, Instance, flipped
from controller.drivers.seams import Seams
from controller.run import checks
from controller.vocabulary import StepName, Verb

Say = Callable[[str], None]


def retire(old: Instance, seams: Seams) -> int:
    """The old slot closes the router's pooled connections to it; how many were still open after 5 s."""
    seams.backend.close_router_connections(old.handle)
    return checks.wait_retired(seams.probes, seams.clock, old)


def settle(facts: Facts, seams: Seams, say: Say) -> tuple[Facts, str, bool]:
    """Finish or undo the operation in ``facts.op``: (the facts, what was done, whether it completed)."""
    op = facts.op
    assert op is not None
    candidate = op.candidate
    router = facts.router
    routed = router is not None and candidate is not None and seams.router.current(router) == candidate.socket
    if op.step == StepName.FLIP and routed:
        old = facts.slot(facts.active)
        if old is not None and old != candidate:
            retire(old, seams)  # as a flip does: no request may keep reaching the old version
        say(messages.REPAIR_COMPLETED(action=op.action, color=op.color, version=op.version))
        rollout = op.rollout and dataclasses.replace(op.rollout, started_at=seams.clock.time())
        done = flipped(facts, op.color, rollout, parked=op.parked)
        return done, "interrupted after the router flipped; completed", True
    if op.step == StepName.FLIP and router is not None and facts.active is not None:
        seams.router.point_to(router, facts.slots[facts.active].socket)  # undo a partial flip
        say(messages.REPAIR_NEVER_FLIPPED(action=op.action))
        return facts.replace(op=None), "interrupted before the flip took effect", False
    if candidate is not None and candidate not in facts.slots.values():
        seams.backend.stop(candidate.handle)
    say(messages.REPAIR_STOPPED_HALF_STARTED(action=op.action, version=op.version, step=repr(op.step)))
    return facts.replace(op=None), f"interrupted at step {op.step!r}; candidate stopped, live traffic unchanged", False


def steer(facts: Facts, seams: Seams, canary: str | None, weight: int) -> None:
    """Send ``weight``% of new requests to the ``canary`` slot and the rest to the live one (no canary
    or 0%: all to live). A slot that loses share closes its pooled router connections, where the router
    says they may now lead to the wrong slot (nginx's stay with their route)."""
    assert facts.router is not None and facts.active is not None
    live = facts.slots[facts.active]
    before = seams.router.shares(facts.router)
    stale = True
    target = facts.slots[canary].socket if canary is not None and weight > 0 else None
    if target is not None:
        stale = seams.router.split(facts.router, live.socket, target, weight)
    else:
        seams.router.point_to(facts.router, live.socket)
    wanted = _split(live.socket, target, weight)
    for slot in facts.slots.values():
        if stale and before.get(slot.socket, 0) > wanted.get(slot.socket, 0):
            seams.backend.close_router_connections(slot.handle)


def route(facts: Facts, seams: Seams) -> None:
    """Point a running router where the facts say: the live slot, and a canary's share if one runs."""
    rollout = facts.rollout
    if isinstance(rollout, Canary):
        steer(facts, seams, rollout.color, rollout.weight)
    else:
        steer(facts, seams, None, 0)


def _split(live: str, canary: str | None, weight: int) -> dict[str, int]:
    return {live: 100} if canary is None or weight == 0 else {live: 100 - weight, canary: weight}


def shares(facts: Facts) -> dict[str, int]:
    """Where the facts say new requests go, as the routers report it: upstream -> percent."""
    assert facts.active is not None
    live, rollout = facts.slots[facts.active], facts.rollout
    if not isinstance(rollout, Canary):
        return {live.socket: 100}
    return _split(live.socket, facts.slots[rollout.color].socket, rollout.weight)


def _router(facts: Facts, seams: Seams, events: list[Event]) -> Facts:
    """A dead router is started again on its address; a live one that sends traffic elsewhere than the
    facts say (a command killed between a weight and its commit) is pointed back."""
    router = facts.router
    if router is None or facts.active is None or facts.op is not None:
        return facts
    live = facts.slots[facts.active]
    if not seams.router.alive(router):
        seams.say(messages.REPAIR_ROUTER_DOWN(kind=router.kind))
        facts = facts.replace(router=seams.router.start(live.socket))
        events.append(Event(Verb.REPAIR, "repaired", live.version, live.version, StepName.ROUTER, "router restarted"))
    else:
        if seams.router.shares(router) == shares(facts):
            return facts
        seams.say(messages.REPAIR_ROUTER_ELSEWHERE())
        events.append(
            Event(Verb.REPAIR, "repaired", live.version, live.version, StepName.ROUTER, "router pointed back")
        )
    route(facts, seams)
    return facts


def strays(facts: Facts, seams: Seams) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Handles of this deployment's instances and routers that no fact accounts for."""
    known = {slot.handle for slot in facts.slots.values()}
    if facts.op and facts.op.candidate:
        known.add(facts.op.candidate.handle)
    instances = tuple(found.handle for found in seams.backend.running() if found.handle not in known)
    return instances, tuple(seams.router.stray(facts.router))


def repair(facts: Facts, seams: Seams) -> Facts:
    if facts == Facts():
        # Nothing is known: a first `up`, or a state file that was lost. What runs here is then not
        # ours to stop on a guess (a refused command must never cause an outage): `status` reports
        # it, `down` stops it.
        return facts
    events: list[Event] = []
    if facts.op is not None:
        op = facts.op
        live = facts.slot(facts.active)
        facts, reason, _ = settle(facts, seams, seams.say)
        events.append(Event(op.action, "repaired", live.version if live else None, op.version, op.step, reason))
    instances, routers = strays(facts, seams)
    for handle in instances:
        seams.say(messages.REPAIR_STRAY_INSTANCE(handle=handle))
        seams.backend.stop(handle)
        events.append(Event(Verb.REPAIR, "repaired", reason=f"stopped stray instance {handle}"))
    for handle in routers:
        seams.say(messages.REPAIR_STRAY_ROUTER(handle=handle))
        seams.router.remove_stray(handle)
        events.append(Event(Verb.REPAIR, "repaired", reason=f"stopped stray router {handle}"))
    facts = _router(facts, seams, events)
    if events:
        seams.store.save(facts, *events)
    return facts
