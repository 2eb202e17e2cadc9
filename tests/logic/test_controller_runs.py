"""Whole commands on in-memory fakes of the seams: the steps a plan holds, the calls they make, the facts
they leave, and a controller killed before every step of every command, repaired by the next one.

The registry is real (trained sample models: v1 rules, v2 and v4 TF-IDF); processes, routers, HTTP,
SQLite and time are fakes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from artifact.shadow import Control
from artifact.trust import load_model
from controller import messages
from controller.core.facts import Facts
from controller.core.phase import ALLOWED, COMMANDS, Observed, Phase
from controller.core.planner import plan
from controller.core.steps import Command, Plan, Refusal
from controller.drivers import host, shadow
from controller.drivers.host import free_port
from controller.errors import CheckFailed, NeedsOperator, Refused, UsageError
from controller.run.deployment import Deployment
from controller.settings import ControllerSettings
from fakes import Crash, CrashAt, FakeBackend, FakeClock, FakeProbes, FakeRouter, MemoryStore, NoCrash
from support import TRUSTED_KEYS, artifact_with_model, trust


@dataclass
class World:
    """One deployment's outside world, kept across controller 'processes'."""

    models: Path
    run_dir: Path
    backend: FakeBackend = field(default_factory=FakeBackend)
    router: FakeRouter = field(default_factory=FakeRouter)
    store: MemoryStore = field(default_factory=MemoryStore)
    clock: FakeClock = field(default_factory=FakeClock)
    said: list[str] = field(default_factory=list)
    probes: FakeProbes = field(init=False)

    def __post_init__(self) -> None:
        self.probes = FakeProbes(self.backend)

    def controller(self, hooks: object | None = None) -> Deployment:
        settings = ControllerSettings(
            models_dir=self.models,
            run_dir=self.run_dir,
            router_port=free_port(),
            trusted_keys=TRUSTED_KEYS,
            shadow_min_requests=0,  # no traffic in these stories: the evidence gate has its own (test_shadow.py)
            watch_seconds=0,  # the watch is the agent's: test_canary.py
        )
        return Deployment(
            settings,
            backend=self.backend,
            routers=lambda kind: self.router,
            probes=self.probes,
            store=self.store,
            clock=self.clock,
            hooks=hooks or NoCrash(),  # type: ignore[arg-type]
            say=self.said.append,
            start_agent=lambda facts: False,  # the agent's decisions are commands: tested as commands here
        )

    @property
    def facts(self) -> Facts:
        return self.store.facts

    def serving(self) -> int | None:
        """The version the router sends users to."""
        return next((i.version for i in self.backend.instances.values() if i.socket == self.router.upstream), None)

    def leaked(self) -> set[str]:
        """Running instances that no slot accounts for."""
        known = {slot.handle for slot in self.facts.slots.values()}
        return self.backend.alive_handles - known


@pytest.fixture
def world(models: Path, tmp_path: Path) -> World:
    return World(models, tmp_path / "run")


def live_with_previous(world: World) -> None:
    """v2 live in green, v1 the rollback target in blue."""
    world.controller().up("sample", 1)
    world.controller().promote(2)


# ------------------------------------------------------------------ the planner, on data


def _facts_for(phase: Phase, world: World) -> tuple[Facts, Observed]:
    """A deployment in ``phase`` on the fakes, and what is observed of it."""
    if phase is not Phase.ABSENT:
        world.controller().up("sample", 1)
    if phase in (Phase.STAGED, Phase.CANARY):
        world.controller().stage(2)
    if phase is Phase.CANARY:
        world.controller().promote(canary=(5, 50, 100))
    if phase is Phase.DEGRADED:
        world.backend.kill(world.facts.slots["blue"].handle)
    controller = world.controller()
    facts = world.facts
    if phase is Phase.PROGRESSING:
        from controller.core.facts import Op

        facts = facts.replace(op=Op("stage", "green", 2, "smoke"))
    return facts, controller.observe(facts)


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize(
    "name", ["up", "stage", "promote", "promote VERSION", "rollback", "abort", "advance", "conclude", "heal", "down"]
)
def test_the_planner_refuses_exactly_what_the_table_forbids(world: World, phase: Phase, name: str) -> None:
    facts, observed = _facts_for(phase, world)
    command = {
        "up": Command("up", 1, model="sample"),
        "stage": Command("stage", 2),
        "promote": Command("promote"),
        "promote VERSION": Command("promote", 2),
        "rollback": Command("rollback"),
        "abort": Command("abort"),
        "advance": Command("advance"),
        "conclude": Command("conclude", reason="watch passed"),
        "heal": Command("heal"),
        "down": Command("down"),
    }[name]
    decision = plan(command, facts, observed)
    assert name in COMMANDS
    if name not in ALLOWED[phase]:
        assert isinstance(decision, Refusal) and messages.CANNOT.found_in(decision.reason, command=name)
        assert "allowed now: " in decision.reason
    else:  # allowed by the table: a plan, or a refusal on the facts that says why
        assert isinstance(decision, Plan) or "allowed now" not in decision.reason


def test_plans_name_their_steps_in_order(world: World) -> None:
    controller = world.controller()
    empty = Facts()
    up = plan(Command("up", 1, model="sample"), empty, controller.observe(empty))
    assert isinstance(up, Plan)
    assert [s.name for s in up.steps] == ["verify", "start", "ready", "smoke", "gate", "router", "commit"]

    controller.up("sample", 1)
    facts = world.facts
    one_button = plan(Command("promote", 2, force=True), facts, controller.observe(facts))
    assert isinstance(one_button, Plan)
    assert [(s.name, s.action) for s in one_button.steps] == [
        ("verify", "stage"),
        ("start", "stage"),
        ("ready", "stage"),
        ("smoke", "stage"),
        ("gate", "stage"),
        ("speed", "stage"),
        ("commit", "stage"),
        ("flip", "promote"),
        ("retire", "promote"),
        ("commit", "promote"),
    ]
    assert all(s.forced for s in one_button.steps if s.name in ("gate", "speed", "flip", "commit"))

    already = plan(Command("promote", 1), facts, controller.observe(facts))
    assert isinstance(already, Plan) and already.steps == () and "already live" in already.message

    controller.stage(2)
    facts = world.facts
    staged = plan(Command("promote", 2), facts, controller.observe(facts))
    assert isinstance(staged, Plan) and [s.name for s in staged.steps] == [
        "gate",
        "evidence",
        "flip",
        "retire",
        "commit",
    ]
    back = plan(Command("rollback"), facts, controller.observe(facts))
    assert isinstance(back, Refusal)  # nothing to roll back to while v2 is only staged


def test_stage_reuses_a_ready_idle_instance_of_the_same_version(world: World) -> None:
    live_with_previous(world)
    world.controller().rollback()  # v1 live in blue, v2 still runs in green as the previous slot
    facts = world.facts
    decision = plan(Command("stage", 2), facts, world.controller().observe(facts))
    assert isinstance(decision, Plan) and [s.name for s in decision.steps] == ["smoke", "gate", "speed", "commit"]
    starts = len([c for c in world.backend.calls if c[0] == "start"])
    world.controller().stage(2)
    assert "stage: reusing the running green instance of v2" in world.said
    assert len([c for c in world.backend.calls if c[0] == "start"]) == starts, "it started a new instance"
    assert world.facts.staged == "green"
    assert world.store.events[-1].reason == "reused the running instance"


def test_refusals_that_depend_on_the_facts(world: World) -> None:
    world.controller().up("sample", 1)
    with pytest.raises(Refused, match="v1 is already live in blue"):
        world.controller().stage(1)
    with pytest.raises(Refused, match=messages.NO_PREVIOUS_SLOT.pattern()):
        world.controller().rollback()
    world.controller().promote(2)
    world.backend.kill(world.facts.slots["blue"].handle)
    with pytest.raises(Refused, match=messages.NOT_HEALTHY.pattern(color="blue", version=1, problem="not running")):
        world.controller().rollback()
    assert world.store.events[-1].outcome == "refused" and world.store.events[-1].step == "ready"
    assert world.serving() == 2


def test_up_refuses_a_taken_port(world: World) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        controller = world.controller()
        controller.settings = controller.settings.model_copy(update={"router_port": port})
        with pytest.raises(
            UsageError, match=f"port {port} on 127.0.0.1 is in use \\(it is taken by pid {os.getpid()}: "
        ):
            controller.up("sample", 1)
    assert world.backend.calls == []


def test_a_router_port_lent_to_an_outgoing_connection_is_named_as_such() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as client:
        port = client.getsockname()[1]  # the kernel lent it from its ephemeral range
        assert host.port_user(port).startswith("1 connection(s) use it as their own port; choose a port outside")


# ------------------------------------------------------------------ runs: calls made, facts left


def test_a_promote_starts_checks_flips_and_retires_in_that_order(world: World) -> None:
    world.controller().up("sample", 1)
    blue = world.facts.slots["blue"]
    world.backend.calls.clear()
    world.router.calls.clear()
    hooks = NoCrash()
    message = world.controller(hooks).promote(2)

    green = world.facts.slots["green"]
    assert hooks.seen == ["verify", "start", "ready", "smoke", "gate", "speed", "commit", "flip", "retire", "commit"]
    assert world.backend.calls == [("start", "green", "2"), ("retire", blue.handle)]
    assert world.router.calls == [("point_to", green.socket)]
    assert world.facts == Facts(
        name="sample", active="green", previous="blue", slots={"blue": blue, "green": green}, router=world.facts.router
    )
    assert [(e.action, e.outcome, e.from_version, e.to_version) for e in world.store.events[-2:]] == [
        ("stage", "ok", 1, 2),
        ("promote", "ok", 1, 2),
    ]
    assert message.startswith("promote: sample v2 (green) is live") and "v1 (blue) keeps running" in message
    assert world.serving() == 2


def test_a_deploy_meets_the_gate_even_when_the_stage_was_forced(world: World) -> None:
    live_with_previous(world)  # v2 live, v1 previous
    world.controller().stage(1, force=True)  # reused: v1 still runs in blue
    with pytest.raises(CheckFailed, match=r"gate failed: .*worse than live"):
        world.controller().promote()
    assert world.serving() == 2 and world.facts.staged == "blue"
    assert (world.store.events[-1].action, world.store.events[-1].step) == ("promote", "gate")
    world.controller().promote(force=True)
    assert world.serving() == 1 and world.store.events[-1].forced


def test_a_failed_check_stops_the_candidate_and_leaves_live_traffic(world: World) -> None:
    world.controller().up("sample", 2)
    world.probes.failing_smoke.add(1)
    before = world.facts
    with pytest.raises(CheckFailed, match="smoke failed"):
        world.controller().stage(1, force=True)
    assert world.facts == before and world.leaked() == set() and world.serving() == 2
    failed = world.store.events[-1]
    assert (failed.action, failed.outcome, failed.step, failed.forced) == ("stage", "failed", "smoke", True)

    world.probes.failing_smoke.clear()
    with pytest.raises(CheckFailed, match=r"gate failed: .*worse than live.*use --force"):
        world.controller().stage(1)
    assert world.facts == before and world.leaked() == set()

    world.probes.never_ready.add(1)
    with pytest.raises(CheckFailed, match=r"ready failed: not ready within 60s \(/readyz answered 503\)"):
        world.controller().stage(1)
    assert world.facts == before and world.leaked() == set()


def test_a_router_that_does_not_take_the_flip_leaves_traffic_where_it_was(world: World) -> None:
    world.controller().up("sample", 1)
    world.controller().stage(2)
    world.router.refuse_flips = True
    with pytest.raises(NeedsOperator, match="did not take the flip"):
        world.controller().promote()
    assert world.facts.active == "blue" and world.facts.staged == "green" and world.facts.op is None
    assert world.serving() == 1
    assert world.store.events[-1].outcome == "failed" and world.store.events[-1].step == "flip"


def test_down_stops_everything_and_any_command_restarts_a_dead_router(world: World) -> None:
    live_with_previous(world)
    world.router.running.clear()  # the router died
    assert "already up" in world.controller().up("sample", 2)
    assert world.serving() == 2
    assert messages.REPAIR_ROUTER_DOWN.found_in("\n".join(world.said), kind="fake")
    assert world.store.events[-1].reason == "router restarted"
    world.router.running.clear()  # and again: a rollback repairs it instead of failing
    assert "rollback:" in world.controller().rollback()
    assert world.serving() == 1
    assert "down: stopped 3 process(es)" in world.controller().down()
    assert world.backend.alive_handles == set() and world.router.running == set()
    assert world.facts == Facts()
    assert world.controller().down() == "down: nothing runs in this deployment"


# ------------------------------------------------------------------ kill -9 before every step

KILL_MATRIX = {
    "up": ["verify", "start", "ready", "smoke", "gate", "router", "commit"],
    "stage": ["verify", "start", "ready", "smoke", "gate", "speed", "commit", "stop"],
    "promote VERSION": ["verify", "start", "ready", "smoke", "gate", "speed", "commit", "flip", "retire", "commit#2"],
    "promote": ["gate", "evidence", "flip", "retire", "commit"],
    "rollback": ["flip", "retire", "commit"],
}


def _given(world: World, command: str) -> None:
    if command in ("stage", "rollback"):  # v2 live in green; blue holds v1, which a stage replaces
        live_with_previous(world)
    elif command == "promote":
        world.controller().up("sample", 1)
        world.controller().stage(2)
    elif command == "promote VERSION":
        world.controller().up("sample", 1)


def _run(controller: Deployment, command: str) -> str:
    if command == "up":
        return controller.up("sample", 1)
    if command == "stage":
        return controller.stage(4)
    if command == "rollback":
        return controller.rollback()
    return controller.promote(2)  # after a crash, `promote 2` is what a person types again


class CrashAtNth:
    """Crash before the ``nth`` step of that name (a one-button promote commits twice)."""

    def __init__(self, step: str, nth: int) -> None:
        self.step, self.nth, self.count = step, nth, 0

    def before_step(self, step: str) -> None:
        self.count += step == self.step
        if step == self.step and self.count == self.nth:
            raise Crash(step)


@pytest.mark.parametrize(("command", "step"), [(c, s) for c, steps in KILL_MATRIX.items() for s in steps])
def test_a_controller_killed_before_any_step_is_reported_and_repaired(world: World, command: str, step: str) -> None:
    _given(world, command)
    name, _, nth = step.partition("#")
    with pytest.raises(Crash):
        first = world.controller(CrashAtNth(name, int(nth or 1)))
        first.promote() if command == "promote" else _run(first, command)

    # status tells the truth: an operation in flight is Progressing, at the step it reached
    status = world.controller().status()
    op = world.facts.op
    if op is not None:
        assert status["phase"] == "Progressing" and status["interrupted"]["step"] == op.step
    if world.facts.active is not None and (op is None or op.step != "flip"):
        assert world.serving() == world.facts.slots[world.facts.active].version, "live traffic moved"

    # the next command repairs what was left, then does its own work
    _run(world.controller(), command)
    assert world.facts.op is None
    assert world.leaked() == set(), "an instance was leaked"
    assert world.controller().status()["phase"] in ("Healthy", "Staged")
    assert world.serving() == world.facts.slots[world.facts.active or ""].version
    assert len(world.router.running) == 1, "a router was leaked"
    if op is not None:
        assert any(e.outcome == "repaired" for e in world.store.events)
    control = world.run_dir / "shadow" / "control.json"  # copies go where the repaired facts say
    wanted = shadow.desired(world.facts, world.controller().settings)
    assert (Control.parse(control.read_bytes()) if control.exists() else None) == wanted


def test_a_crash_after_the_flip_is_completed_and_the_old_slot_retired(world: World) -> None:
    world.controller().up("sample", 1)
    world.controller().stage(2)
    blue = world.facts.slots["blue"]
    with pytest.raises(Crash):
        world.controller(CrashAt("retire")).promote()
    assert world.serving() == 2 and world.facts.op is not None
    world.backend.calls.clear()
    world.controller().status()  # reading repairs nothing
    assert world.backend.calls == []
    world.controller().rollback()  # repair completes the promote first, then rolls back
    assert ("retire", blue.handle) in world.backend.calls, "the repair did not retire the old slot's connections"
    assert [e.outcome for e in world.store.events[-2:]] == ["repaired", "ok"]
    assert world.serving() == 1


def test_a_refused_command_never_stops_what_runs_when_the_state_is_lost(world: World) -> None:
    live_with_previous(world)
    running, routers = set(world.backend.alive_handles), set(world.router.running)
    world.store.facts = Facts()  # the state file is lost
    with pytest.raises(Refused, match="nothing is live"):
        world.controller().rollback()
    with pytest.raises(NeedsOperator, match=r"3 process\(es\) of this deployment run, but no state records them"):
        world.controller().up("sample", 1)
    assert world.backend.alive_handles == running and world.router.running == routers, "a refusal stopped something"
    status = world.controller().status()
    assert status["phase"] == "Absent" and "3 stray process(es) run: `down` removes them" in status["reason"]
    assert "stopped 3 process(es)" in world.controller().down()
    assert world.backend.alive_handles == set() and world.router.running == set()


def test_a_dead_live_slot_is_never_reported_as_success(world: World) -> None:
    live_with_previous(world)  # v2 live in green, v1 ready in blue
    world.backend.kill(world.facts.slots["green"].handle)
    for attempt in (lambda c: c.up("sample", 2), lambda c: c.promote(2)):
        with pytest.raises(NeedsOperator, match="v2 is live in green, but it is not running: users get errors"):
            attempt(world.controller())
    with pytest.raises(NeedsOperator, match="`release rollback` to send users to v1, which is ready"):
        world.controller().promote(2)
    world.controller().rollback()
    assert world.serving() == 1


def test_an_artifact_without_golden_rows_is_refused_at_verify(world: World, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    shutil.copytree(world.models / "sample", registry / "sample")
    inner, _ = load_model(registry / "sample" / "2", trust())
    bare = artifact_with_model(registry / "sample" / "2", registry, "sample", inner, golden=[])
    world.models = registry
    world.controller().up("sample", 1)
    with pytest.raises(CheckFailed, match="has no golden rows: nothing to smoke-test it with"):
        world.controller().stage(int(bare.name))
    assert world.backend.calls == [("start", "blue", "1")], "it started the candidate"


def test_a_claimed_metric_that_its_model_does_not_reach_is_refused(world: World) -> None:
    world.controller().up("sample", 1)
    world.probes.wrong[2] = 20  # v2's manifest claims more than its model gets right on the golden rows
    with pytest.raises(CheckFailed, match=r"score failed: accuracy .* on 40 labelled rows .* its metrics are not"):
        world.controller().stage(2)
    assert world.leaked() == set() and world.serving() == 1
    world.probes.wrong[2] = 1  # one row more or less is sampling noise, not a lie
    world.controller().stage(2)
    assert world.facts.staged == "green"


def test_a_candidate_much_slower_than_live_is_refused_unless_forced(world: World) -> None:
    world.controller().up("sample", 1)
    world.probes.seconds[2] = 0.0119  # the figures: 11.9 ms against live's 2.0
    world.probes.seconds[1] = 0.0020
    refused = r"speed failed: median 11.9 ms vs live 2.0 ms on the same rows; more than 3x slower in 40 of 40"
    with pytest.raises(CheckFailed, match=refused):
        world.controller().stage(2)
    assert world.leaked() == set()
    world.probes.seconds[2] = 0.0045  # slower, within the default factor of 3
    world.controller().stage(2)
    assert any("speed: median 4.5 ms vs live 2.0 ms" in line for line in world.said)
    world.probes.seconds[4] = 0.05
    world.controller().stage(4, force=True)
    assert world.facts.slots["green"].version == 4 and world.store.events[-1].forced
