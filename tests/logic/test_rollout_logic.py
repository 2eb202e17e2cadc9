"""Canary steps, the watch's decisions and healing, on the in-memory seams: every command the agent
issues, the router calls it makes, the facts and history it leaves, and a crash before every step."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_controller_runs import CrashAtNth, World

from controller import messages
from controller.core.facts import Facts
from controller.errors import Refused
from controller.run.deployment import Deployment
from fakes import Crash


@pytest.fixture
def world(models: Path, tmp_path: Path) -> World:
    return World(models, tmp_path / "run")


def canary_running(world: World, steps: tuple[int, ...] = (5, 50, 100)) -> str:
    world.controller().up("sample", 1)
    world.controller().stage(2)
    return world.controller().promote(canary=steps, step_seconds=30)


def shares(world: World) -> dict[int, int]:
    """version -> percent of new requests, as the router has it."""
    router = world.facts.router
    assert router is not None
    by_socket = {i.socket: i.version for i in world.backend.instances.values()}
    return {by_socket[s]: p for s, p in world.router.shares(router).items()}


def test_a_canary_walks_its_steps_then_flips(world: World) -> None:
    message = canary_running(world)
    assert messages.CANARY_TAKES.found_in(message, weight=5, rest="50% -> 100%")
    assert shares(world) == {1: 95, 2: 5}
    assert world.controller().status()["phase"] == "Canary"
    rollout = world.facts.rollout
    assert rollout is not None and rollout.started_at == world.clock.time()

    world.controller().advance("analysis passed at 5%")
    assert shares(world) == {1: 50, 2: 50}
    assert world.facts.rollout is not None and world.facts.rollout.step == 1

    world.controller().advance("analysis passed at 50%")
    assert shares(world) == {2: 100}
    assert world.facts.active == "green" and world.facts.previous == "blue" and world.facts.rollout is None
    last = world.store.events[-1]
    assert (last.action, last.from_version, last.to_version) == ("promote", 1, 2)
    assert last.reason == "canary analysis passed at 50%: 5% -> 50% -> 100%"


def test_promote_during_a_canary_completes_it_and_the_watch_follows(world: World) -> None:
    world.controller().up("sample", 1)
    world.controller().stage(2)
    world.controller().promote(canary=(10, 100), step_seconds=30, watch_seconds=120)
    assert "watches it for 120 s" in world.controller().promote()
    assert shares(world) == {2: 100}
    rollout = world.facts.rollout
    assert rollout is not None and (rollout.kind, rollout.color, rollout.watch_seconds) == ("watch", "green", 120)

    world.controller().conclude("watch passed after 120 s: 900 requests")
    assert world.facts.rollout is None and world.store.events[-1].action == "watch"


def test_abort_sends_everything_back_and_parks_the_candidate(world: World) -> None:
    canary_running(world)
    world.controller().advance()
    message = world.controller().abort()
    assert message.startswith("abort: sample v1 (blue) takes all live traffic; aborted by hand at 50%")
    assert shares(world) == {1: 100}
    assert world.facts.staged == "green" and world.facts.rollout is None
    assert world.controller().status()["phase"] == "Staged"
    last = world.store.events[-1]
    assert (last.action, last.from_version, last.to_version) == ("abort", 2, 1)
    with pytest.raises(Refused, match=messages.NO_ROLLOUT.pattern()):
        world.controller().abort()


def test_rollback_during_a_canary_is_an_abort(world: World) -> None:
    canary_running(world)
    world.controller().rollback()
    assert shares(world) == {1: 100} and world.store.events[-1].action == "abort"


def test_an_automatic_rollback_parks_the_failed_version(world: World) -> None:
    world.controller().up("sample", 1)
    world.controller().promote(2, watch_seconds=300)
    agent = Deployment(world.controller().settings, **_seams(world), actor="agent (automatic)")
    message = agent.rollback("automatic rollback: worse on errors: 20.0% vs 0.4% 5xx over 60 requests", automatic=True)
    assert messages.PARKED.found_in(message, version=2, color="green")
    assert world.facts.active == "blue" and world.facts.staged == "green" and world.facts.previous is None
    assert world.serving() == 1
    assert world.store.events[-1].reason == "automatic rollback: worse on errors: 20.0% vs 0.4% 5xx over 60 requests"
    with pytest.raises(
        Refused, match=messages.NO_PREVIOUS_SLOT.pattern()
    ):  # a person's rollback cannot flip to the failed one
        world.controller().rollback()


def test_heal_fails_over_restarts_the_live_slot_and_flips_back(world: World) -> None:
    world.controller().up("sample", 1)
    world.controller().promote(2)
    dead = world.facts.slots["green"].handle
    world.backend.kill(dead)
    message = world.controller().heal()
    assert "restarted v2 in green" in message
    new = world.facts.slots["green"]
    assert new.handle != dead and world.serving() == 2
    assert ("point_to", world.facts.slots["blue"].socket) in world.router.calls, "traffic went to blue meanwhile"
    kinds = [(e.action, e.step) for e in world.store.events[-2:]]
    assert kinds == [("heal", "failover"), ("heal", None)]
    assert world.controller().status()["phase"] == "Healthy"


def test_up_with_no_arguments_restores_what_the_facts_describe(world: World) -> None:
    world.controller().up("sample", 1)
    world.controller().promote(2)
    for handle in list(world.backend.alive_handles):  # a reboot: nothing runs any more
        world.backend.kill(handle)
    world.router.running.clear()
    assert "restarted v2 in green, v1 in blue" in world.controller().up()
    assert world.serving() == 2 and world.leaked() == set()
    assert world.controller().status()["phase"] == "Healthy"
    world.controller().down()
    with pytest.raises(Refused, match=messages.NOTHING_TO_RESTORE.pattern()):
        world.controller().up()


def _seams(world: World) -> dict[str, object]:
    return {
        "backend": world.backend,
        "routers": lambda kind: world.router,
        "probes": world.probes,
        "store": world.store,
        "clock": world.clock,
        "say": world.said.append,
        "start_agent": lambda facts: False,
    }


KILLS = {
    "canary": ["gate", "evidence", "weigh", "commit"],
    "advance": ["weigh", "commit"],
    "abort": ["weigh", "commit"],
    "heal": ["failover", "verify", "start", "ready", "commit", "ensure-router"],
}


def _act(controller: Deployment, command: str) -> str:
    if command == "canary":
        return controller.promote(canary=(5, 50, 100))
    return getattr(controller, command)()


@pytest.mark.parametrize(("command", "step"), [(c, s) for c, steps in KILLS.items() for s in steps])
def test_a_controller_killed_before_any_rollout_step_leaves_routing_as_the_facts_say(
    world: World, command: str, step: str
) -> None:
    if command == "heal":
        world.controller().up("sample", 1)
        world.controller().promote(2)
        world.backend.kill(world.facts.slots["green"].handle)
    else:
        world.controller().up("sample", 1)
        world.controller().stage(2)
        if command != "canary":
            canary_running_again = world.controller().promote(canary=(5, 50, 100))
            assert "5%" in canary_running_again
    with pytest.raises(Crash):
        _act(world.controller(CrashAtNth(step, 1)), command)

    world.controller().status()  # answers, whatever was left
    _act(world.controller(), command) if command != "canary" or world.facts.rollout is None else None
    facts = world.facts
    assert facts.op is None and world.leaked() == set()
    rollout = facts.rollout
    live = facts.slots[facts.active or ""].version
    if rollout is not None and rollout.kind == "canary":
        assert shares(world) == {live: 100 - rollout.weight, facts.slots[rollout.color].version: rollout.weight}
    else:
        assert shares(world) == {live: 100}
    assert facts != Facts() and len(world.router.running) == 1


# ------------------------------------------------------------------ flips that complete or end a rollout


def test_a_one_button_promote_with_canary_steps_starts_the_canary(world: World) -> None:
    """`promote VERSION --canary ...` for a version that is not staged: the stage, then the same
    canary as for a staged version (no flag a command accepts is dropped by one of its paths)."""
    world.controller().up("sample", 1)
    message = world.controller().promote(2, canary=(20, 50, 100), step_seconds=5)
    assert messages.CANARY_TAKES.found_in(message, weight=20)
    assert shares(world) == {1: 80, 2: 20}
    rollout = world.facts.rollout
    assert rollout is not None and (rollout.kind, rollout.steps, rollout.step_seconds) == ("canary", (20, 50, 100), 5)
    assert world.controller().status()["phase"] == "Canary"
    assert [e.action for e in world.store.events[-2:]] == ["stage", "canary"]


def _canary_then(world: World, last: str) -> None:
    world.controller().up("sample", 1)
    world.controller().stage(2)
    world.controller().promote(canary=(5, 100), step_seconds=30, watch_seconds=60)
    if last == "completed":
        world.controller().advance("analysis passed at 5%")


def _watch(world: World) -> None:
    world.controller().up("sample", 1)
    world.controller().promote(2, watch_seconds=60)


def _automatic(controller: Deployment) -> str:
    return controller.rollback("automatic rollback: worse on errors: 20% vs 0.4% 5xx over 60 requests", automatic=True)


# (how the deployment got there, the command killed, live and rollback target after the repair, rollout after)
COMPLETIONS = {
    "the agent's last advance": (lambda w: _canary_then(w, "canary"), lambda c: c.advance("passed"), 2, 1, "watch"),
    "promote during a canary": (lambda w: _canary_then(w, "canary"), lambda c: c.promote(), 2, 1, "watch"),
    "a person's rollback during a watch": (_watch, lambda c: c.rollback(), 1, 2, None),
    "abort during a watch": (_watch, lambda c: c.abort(), 1, 2, None),
    "an automatic rollback": (_watch, _automatic, 1, None, None),
    "conclude": (lambda w: _canary_then(w, "completed"), lambda c: c.conclude("watch passed"), 2, 1, None),
}


@pytest.mark.parametrize(
    ("case", "killed_before"),
    [
        (case, step)
        for case in sorted(COMPLETIONS)
        for step in ("retire", "commit")
        if (case, step) != ("conclude", "retire")
    ],
)
def test_a_flip_killed_before_its_commit_is_completed_as_the_commit_would_have(
    world: World, case: str, killed_before: str
) -> None:
    given, act, live, target, rollout_kind = COMPLETIONS[case]
    given(world)
    before = world.serving()
    with pytest.raises(Crash):
        act(world.controller(CrashAtNth(killed_before, 1)))

    if world.facts.op is not None:  # a flip was under way: status says so, and changes nothing
        assert world.controller().status()["phase"] == "Progressing"
    world.controller().heal()  # the next command repairs first
    facts = world.facts
    if case == "conclude":
        world.controller().conclude("watch passed")
        facts = world.facts
    assert facts.op is None and world.leaked() == set()
    versions = {color: slot.version for color, slot in facts.slots.items()}
    assert versions[facts.active or ""] == live and world.serving() == live
    assert (versions[facts.previous] if facts.previous else None) == target
    assert facts.previous != facts.active, "the rollback target is never the live slot"
    rollout = facts.rollout
    assert (rollout.kind if rollout else None) == rollout_kind
    assert rollout is None or rollout.kind != "canary" or rollout.color != facts.active, "no canary on the live slot"
    assert rollout is None or rollout.kind != "watch" or rollout.color == facts.active

    if target is not None:  # a person's rollback afterwards brings users back to what they had
        if rollout is not None:
            world.controller().conclude("watch passed")
        world.controller().rollback()
        assert world.serving() == target
        assert target == (before if case != "conclude" else 1) or live != before
    else:
        with pytest.raises(Refused, match=messages.NO_PREVIOUS_SLOT.pattern()):
            world.controller().rollback()
        assert world.facts.staged is not None and world.facts.slots[world.facts.staged].version == 2
