"""The controller's pure logic, table-driven: phase derivation, the (phase x command) table, the gate."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from artifact.manifest import read_manifest
from controller import messages
from controller.core.facts import Event, Facts, Instance, Op, Router
from controller.core.phase import ALLOWED, COMMANDS, READ_ONLY, Observed, Phase, derive_phase, refusal
from controller.drivers.store import SqliteStore
from controller.run.checks import gate

BLUE = Instance("blue", 1, "1:1:a", 9001, "/s/blue.sock", "x" * 64)
GREEN = Instance("green", 2, "2:2:b", 9002, "/s/green.sock", "y" * 64)
ROUTER = Router("nginx", "127.0.0.1", 8000, "3:3")
LIVE = Facts(name="m", active="blue", slots={"blue": BLUE}, router=ROUTER)
ALL_GOOD = Observed(
    ready={"blue": True, "green": True},
    alive={"blue": True, "green": True},
    router_alive=True,
    router_target=BLUE.socket,
)


@pytest.mark.parametrize(
    ("facts", "observed", "phase", "words"),
    [
        (Facts(), Observed(), Phase.ABSENT, "nothing is live"),
        (Facts(), Observed(stray_instances=("1:1:a", "2:2:b")), Phase.ABSENT, "2 stray"),
        (LIVE, ALL_GOOD, Phase.HEALTHY, "blue (m v1) is live"),
        (
            LIVE.replace(slots={"blue": BLUE, "green": GREEN}, previous="green"),
            ALL_GOOD,
            Phase.HEALTHY,
            "green (m v2) is the rollback target",
        ),
        (LIVE.replace(slots={"blue": BLUE, "green": GREEN}, staged="green"), ALL_GOOD, Phase.STAGED, "is staged"),
        (
            LIVE,
            Observed(alive={"blue": False}, router_alive=True, router_target=BLUE.socket),
            Phase.DEGRADED,
            "not running",
        ),
        (
            LIVE,
            Observed(alive={"blue": True}, ready={"blue": False}, router_alive=True, router_target=BLUE.socket),
            Phase.DEGRADED,
            "not ready",
        ),
        (LIVE, Observed(alive={"blue": True}, ready={"blue": True}), Phase.DEGRADED, "router is not running"),
        (
            LIVE,
            Observed(alive={"blue": True}, ready={"blue": True}, router_alive=True, router_target="/s/x"),
            Phase.DEGRADED,
            "does not point at the live slot",
        ),
        (
            LIVE.replace(slots={"blue": BLUE, "green": GREEN}, staged="green"),
            Observed(
                alive={"blue": True, "green": False},
                ready={"blue": True, "green": False},
                router_alive=True,
                router_target=BLUE.socket,
            ),
            Phase.DEGRADED,
            "staged slot green (m v2) is not ready",
        ),
        (
            LIVE,
            Observed(
                alive={"blue": True},
                ready={"blue": True},
                router_alive=True,
                router_target=BLUE.socket,
                stray_routers=("4:4",),
            ),
            Phase.DEGRADED,
            "1 stray",
        ),
        (
            LIVE.replace(op=Op("promote", "green", 2, "smoke", GREEN)),
            ALL_GOOD,
            Phase.PROGRESSING,
            "interrupted promote of v2 into green (reached step 'smoke')",
        ),
    ],
)
def test_phase_is_derived_from_facts_and_observation(
    facts: Facts, observed: Observed, phase: Phase, words: str
) -> None:
    got, reason = derive_phase(facts, observed)
    assert got == phase
    assert words in reason


@pytest.mark.parametrize(("phase", "command"), list(itertools.product(Phase, COMMANDS)))
def test_every_phase_and_command_pair_is_decided(phase: Phase, command: str) -> None:
    reason = refusal(phase, command)
    if command in ALLOWED[phase]:
        assert reason is None
    else:
        assert reason is not None and messages.NOT_ALLOWED_NOW.found_in(reason, command=command)
        assert "allowed now: " in reason
        for allowed in ALLOWED[phase]:
            assert allowed in reason.split("allowed now: ")[1]
    if command in READ_ONLY:
        assert reason is None, "status and history must always work"


def test_the_refusals_users_meet_most_say_what_to_do() -> None:
    assert "run `release.py up NAME VERSION` first" in (refusal(Phase.ABSENT, "stage") or "")
    promote = refusal(Phase.HEALTHY, "promote") or ""
    assert messages.NOTHING_STAGED.found_in(promote)


def test_gate_compares_only_on_shared_evaluation_data(registry: Path) -> None:
    rules = read_manifest(registry / "sample" / "1")
    tfidf = read_manifest(registry / "sample" / "2")
    better = gate(tfidf, rules, 0.0)
    assert better.passed and "macro_f1 on short" in better.reason and "vs live" in better.reason
    worse = gate(rules, tfidf, 0.0)
    assert not worse.passed and "worse than live beyond tolerance 0.0" in worse.reason
    assert gate(rules, tfidf, 0.5).passed  # within a generous tolerance
    assert gate(rules, None, 0.0).reason == "nothing live to compare with"
    tabular = read_manifest(registry / "company-size" / "1")
    apart = gate(tabular, tfidf, 0.0)
    assert not apart.passed and apart.reason.startswith("not comparable")


def test_the_gate_refuses_to_compare_a_grouped_metric_with_an_ungrouped_one(registry: Path) -> None:
    rules = read_manifest(registry / "sample" / "1")
    tfidf = read_manifest(registry / "sample" / "2")
    assert rules.metrics["grouped_by"] == tfidf.metrics["grouped_by"] == "ticker"
    assert tfidf.metrics["eval_sets"]["short"]["scored"] == "out of fold"
    older = rules.model_copy(update={"metrics": {k: v for k, v in rules.metrics.items() if k != "grouped_by"}})
    mixed = gate(tfidf, older, 0.0)
    assert not mixed.passed and mixed.reason.startswith("not comparable: v2 is evaluated on groups it never saw")
    assert "live v1 is evaluated on rows whose groups it may have seen" in mixed.reason
    assert not gate(older, tfidf, 0.5).passed, "whatever the tolerance"


def test_store_writes_facts_and_history_together(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", actor="alice (console)")
    assert store.load() == Facts()
    facts = LIVE.replace(op=Op("promote", "green", 2, "flip", GREEN, forced=True))
    store.save(facts, Event("promote", "ok", 1, 2, reason="r", forced=True))
    again = SqliteStore(tmp_path / "state.db")
    assert again.load() == facts
    assert again.history()[0] | {"at": None} == {
        "at": None,
        "action": "promote",
        "outcome": "ok",
        "from_version": 1,
        "to_version": 2,
        "step": None,
        "reason": "r",
        "forced": True,
        "actor": "alice (console)",
    }


def test_a_state_file_from_before_actors_keeps_its_history(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "state.db")
    old.executescript(
        "CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, action TEXT NOT NULL,"
        " outcome TEXT NOT NULL, from_version INTEGER, to_version INTEGER, step TEXT, reason TEXT NOT NULL,"
        " forced INTEGER NOT NULL);"
        "INSERT INTO history (at, action, outcome, reason, forced) VALUES ('2026-01-01', 'up', 'ok', 'r', 0);"
    )
    old.commit()
    old.close()
    store = SqliteStore(tmp_path / "state.db", actor="bob (cli)")
    store.record(Event("rollback", "ok", 2, 1))
    assert [(row["action"], row["actor"]) for row in store.history()] == [("up", ""), ("rollback", "bob (cli)")]


def test_status_shows_the_agents_reading_of_this_very_step_and_nothing_planted(tmp_path: Path) -> None:
    from controller.core.facts import Canary
    from controller.drivers import agents

    step = Canary("green", started_at=100.0, steps=(25, 100))
    agents.publish(tmp_path, step, "no difference found yet over 300 requests", 130.0)
    assert agents.reading(tmp_path, step) == (130.0, "no difference found yet over 300 requests")
    next_step = Canary("green", started_at=160.0, steps=(25, 100), step=1)
    assert agents.reading(tmp_path, next_step) is None  # a reading of the step before is not this one's
    (tmp_path / "analysis.json").unlink()
    (tmp_path / "elsewhere.json").write_text('{"window": ["canary", "green", 0, 100.0], "at": 1, "words": "planted"}')
    (tmp_path / "analysis.json").symlink_to(tmp_path / "elsewhere.json")
    assert agents.reading(tmp_path, step) is None


def test_compose_runs_the_same_nginx_config_as_the_docker_backend() -> None:
    from controller.drivers.routers.nginx import render_docker_config
    from support import ROOT

    assert (ROOT / "docker" / "router" / "nginx.conf").read_text() == render_docker_config(), (
        "regenerate it: python -m controller.drivers.routers.nginx > docker/router/nginx.conf"
    )


def test_the_reason_a_service_gave_for_exiting_is_found_in_its_log() -> None:
    from controller.run.checks import reason_in

    record = '{"time": "t", "level": "error", "logger": "x", "message": "cannot serve m: wants posix.system"}'
    assert reason_in("started\n" + record + "\nexiting") == "cannot serve m: wants posix.system"
    assert reason_in("error: models/x is not signed\n") == "models/x is not signed"
    assert reason_in("nothing to see") is None


def test_a_canary_and_a_watch_are_stored_as_what_they_are_and_older_watches_still_read() -> None:
    import json

    from controller.core.facts import Canary, Facts, Watch, decode, encode

    base = Facts(name="sample", active="blue", slots={})
    for rollout in (Canary("green", (5, 50, 100), step=1, watch_seconds=30), Watch("green", 300.0, started_at=9.0)):
        stored = json.loads(encode(base.replace(rollout=rollout)))
        assert stored["rollout"]["kind"] == rollout.kind
        assert decode(json.dumps(stored)).rollout == rollout
    older = {"kind": "watch", "color": "blue", "started_at": 5.0, "steps": [], "step": 0, "step_seconds": 60.0}
    read = decode(json.dumps(json.loads(encode(base)) | {"rollout": older | {"watch_seconds": 120.0}})).rollout
    assert read == Watch("blue", 120.0, started_at=5.0) and read.weight == 100


def test_every_message_is_found_by_name_in_what_it_printed_and_not_with_other_values() -> None:
    templates = {name: m for name, m in vars(messages).items() if isinstance(m, messages.Message)}
    assert len(templates) > 20
    for name, message in templates.items():
        values = {field: f"<{field}>" for field in message.names}
        said = f"earlier line\n{message(**values)}\nlater line"
        assert "\n" not in message.text, f"{name} is not one line"
        assert message.found_in(said, **values), name
        if values:
            field = next(iter(values))
            assert not message.found_in(said, **{field: "something else"}), name
    assert messages.NO_PREVIOUS_SLOT.found_in("cannot rollback: there is no previous slot to flip back to")
