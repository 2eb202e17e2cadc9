"""release.py as the team uses it: real service processes, a real nginx or the builtin router,
a real SQLite state file, and a load generator on 127.0.0.1 during every flip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import testmodels
from artifact.manifest import read_manifest
from controller import messages
from controller.drivers.backends.process import ProcessBackend
from controller.settings import ControllerSettings
from support import ENERGY, ROUTERS, TRUSTED_KEYS, Load, Release, artifact_with_model, cpus_of, port_open


@pytest.fixture
def deployment(models: Path, tmp_path: Path) -> Iterator[Callable[[str], Release]]:
    """A deployment with the given router, taken down after the test whatever happened."""
    made: list[Release] = []

    def make(router: str) -> Release:
        made.append(Release(models, tmp_path / "run", router))
        return made[-1]

    yield make
    for each in made:
        each("down", check=False)


@pytest.fixture(params=ROUTERS)
def release(request: pytest.FixtureRequest, deployment: Callable[[str], Release]) -> Release:
    return deployment(request.param)


def test_the_team_story_up_stage_promote_rollback(release: Release) -> None:
    # Given the rule-based model is live
    out = release("up", "sample", "1")
    assert f"is live at {release.url}/predict" in out.stdout
    assert release.serving() == "sample/1"
    assert "already up" in release("up", "sample", "1").stdout  # idempotent

    # When the developers stage the ML model, it is reachable at a preview address and users see no change
    release("stage", "2")
    status = release.status()
    assert status["phase"] == "Staged"
    green = next(s for s in status["slots"] if s["color"] == "green")
    preview = httpx.post(green["url"] + "/predict", json=ENERGY)
    assert preview.headers["x-model-version"] == "sample/2"
    assert release.serving() == "sample/1"
    if len(os.sched_getaffinity(0)) > 1:  # checking the candidate does not take the live slot's core
        blue = next(s for s in status["slots"] if s["color"] == "blue")
        cpus = {slot["color"]: cpus_of(httpx.get(slot["url"] + "/healthz").json()["pid"]) for slot in (blue, green)}
        assert cpus == {"blue": {min(os.sched_getaffinity(0))}, "green": {max(os.sched_getaffinity(0))}}

    # When the business promotes it, users get v2 and v1 keeps running as the rollback target
    release("promote")
    assert release.serving() == "sample/2"
    status = release.status()
    assert status["phase"] == "Healthy" and status["router"]["target"] == "green"
    roles = {s["color"]: (s["role"], s["version"], s["ready"]) for s in status["slots"]}
    assert roles == {"green": ("live", 2, True), "blue": ("previous", 1, True)}

    # When v2 misbehaves, rollback flips back at once
    release("rollback")
    assert release.serving() == "sample/1"
    assert [(h["action"], h["outcome"], h["from_version"], h["to_version"]) for h in release.history()] == [
        ("up", "ok", None, 1),
        ("stage", "ok", 1, 2),
        ("promote", "ok", 1, 2),
        ("rollback", "ok", 2, 1),
    ]
    text = release("status").stdout
    assert "phase:  Healthy" in text and "rollback target" in text

    # And down stops everything it started
    release("down")
    assert release.instances() == 0
    assert not port_open(release.port)
    assert release.status()["phase"] == "Absent"


def test_flips_under_load_lose_no_request(release: Release) -> None:
    release("up", "sample", "1")
    windows: list[tuple[float, float, str]] = []  # a flip returned .. the next began: expected version
    with Load(release.url, threads=16) as load:
        time.sleep(0.5)
        expected = "sample/1"
        flip_started = time.monotonic()
        for i in range(20):
            args = ("promote", "2") if i % 2 == 0 else ("rollback",)
            release(*args)
            returned = time.monotonic()
            if windows:
                windows[-1] = (windows[-1][0], flip_started, windows[-1][2])
            expected = "sample/2" if i % 2 == 0 else "sample/1"
            assert release.serving() == expected, f"after flip {i + 1}"
            windows.append((returned, float("inf"), expected))
            time.sleep(0.2)
            flip_started = time.monotonic()
        time.sleep(0.3)
    assert len(load.results) > 200, "the load generator barely ran"
    assert load.failures() == [], f"{len(load.failures())} failed of {len(load.results)}"
    late = [
        (start, version, want)
        for start, _, version, _ in load.results
        for begin, end, want in windows
        if begin < start < end and version != want
    ]
    assert late == [], "requests sent after a flip returned were served by the old version"
    flips = [h for h in release.history() if h["action"] in ("promote", "rollback")]
    assert len(flips) == 20 and all(h["outcome"] == "ok" for h in flips)


def test_bad_candidates_are_refused_and_live_traffic_sees_nothing(release: Release) -> None:
    release("up", "sample", "2")
    with Load(release.url, threads=8) as load:
        cases = {"3": "ready", "4": "smoke", "1": "gate", "5": "verify"}
        for version, step in cases.items():
            # v3 never becomes ready: it waits out a short deadline. The others become ready, which on
            # two busy cores can take a while: they get the default.
            timeout = "4" if version == "3" else "60"
            result = release("stage", version, check=False, SWITCHYARD_READY_TIMEOUT=timeout)
            assert result.returncode == 1, result.stdout + result.stderr
            errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and errors[0].startswith(f"error: {step} failed: "), result.stderr
            assert release.instances() == 1, f"the {step} candidate was left running"
        time.sleep(0.3)
    assert load.failures() == []
    assert {r[2] for r in load.results} == {"sample/2"}
    failed = [(h["to_version"], h["step"]) for h in release.history() if h["outcome"] == "failed"]
    assert failed == [(int(v), s) for v, s in cases.items()]
    assert release.status()["phase"] == "Healthy"

    forced = release("promote", "1", "--force")
    assert "FORCED past" in forced.stderr
    assert release.serving() == "sample/1"
    assert release.history()[-1]["forced"] is True


def test_refusals_say_what_is_allowed(release: Release) -> None:
    refused = release("promote", check=False)
    assert refused.returncode == 1 and messages.NOTHING_LIVE.found_in(refused.stderr)
    release("up", "sample", "1")
    nothing = release("rollback", check=False)
    assert nothing.returncode == 1 and messages.NO_PREVIOUS_SLOT.found_in(nothing.stderr)
    unstaged = release("promote", check=False)
    assert unstaged.returncode == 1 and messages.NOTHING_STAGED.found_in(unstaged.stderr)
    missing = release("stage", "99", check=False)
    assert missing.returncode == 2 and "version 99 not found" in missing.stderr
    assert "already live" in release("promote", "1").stdout


def test_rollback_never_flips_to_a_dead_instance(release: Release) -> None:
    release("up", "sample", "1")
    release("promote", "2")
    blue = next(s for s in release.status()["slots"] if s["color"] == "blue")
    subprocess.run(["kill", "-9", blue["handle"].split(":")[0]], check=True)
    time.sleep(0.3)
    refused = release("rollback", check=False)
    assert refused.returncode == 1 and messages.NOT_HEALTHY.found_in(refused.stderr)
    assert release.serving() == "sample/2"
    status = release.status()
    assert status["phase"] == "Healthy" and "rollback target blue (sample v1) is not ready" in status["reason"]


# Every step of every command is killed on fakes (test_controller_runs.py); here, on real processes
# and a real router, two points: a candidate started but not ready, and a flip whose old pooled
# connections were not retired yet.
@pytest.mark.parametrize("step", ["ready", "retire"])
def test_kill_9_during_promote_is_reported_and_repaired(deployment: Callable[[str], Release], step: str) -> None:
    release = deployment("nginx" if shutil.which("nginx") else "builtin")
    release("up", "sample", "1")
    proc = release.spawn("promote", "2", pause_at=step)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == f"paused at {step}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    status = release.status()
    assert status["phase"] == "Progressing", status
    # before the flip, `promote 2` is still staging v2
    want = "promote" if step == "retire" else "stage"
    assert status["interrupted"]["action"] == want and status["interrupted"]["version"] == 2
    assert release.serving() == ("sample/2" if step == "retire" else "sample/1")

    again = release("promote", "2")
    assert "repair:" in again.stderr
    assert release.serving() == "sample/2"
    # the repair retired the old slot's pooled router connections, as a flip does: none reaches v1
    with Load(release.url, threads=8) as load:
        time.sleep(1.0)
    assert len(load.results) > 50 and {r[2] for r in load.results} == {"sample/2"}
    status = release.status()
    assert status["phase"] == "Healthy", status
    assert release.instances() == 2  # live v2 and the rollback target v1: nothing leaked
    assert any(h["outcome"] == "repaired" for h in release.history())


def test_two_promotes_at_once_one_wins(deployment: Callable[[str], Release]) -> None:
    release = deployment("builtin")
    release("up", "sample", "1")
    procs = [release.spawn("promote", "2", SWITCHYARD_LOCK_TIMEOUT="0.2") for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "is still running" in loser and "try again" in loser
    assert release.serving() == "sample/2"
    assert release.status()["phase"] == "Healthy"


def test_a_stray_instance_is_found_and_stopped(deployment: Callable[[str], Release], models: Path) -> None:
    release = deployment("builtin")
    release("up", "sample", "1")
    settings = ControllerSettings(run_dir=release.run_dir, trusted_keys=TRUSTED_KEYS)
    ProcessBackend(settings).start(
        color="green",
        version=2,
        model_dir=models / "sample" / "2",
        sha256=read_manifest(models / "sample" / "2").artifact.sha256,
    )
    status = release.status()
    assert status["phase"] == "Degraded" and "1 stray" in status["reason"]
    release("stage", "2")
    assert release.instances() == 2
    assert release.status()["phase"] == "Staged"


def test_a_refused_artifact_names_its_reason_on_the_error_line(models: Path, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    shutil.copytree(models / "sample", registry / "sample")
    marker = tmp_path / "pwned"
    hostile = artifact_with_model(registry / "sample" / "2", registry, "sample", testmodels.Hostile(str(marker)))
    release = Release(registry, tmp_path / "run", "builtin")
    try:
        release("up", "sample", "2")
        refused = release("stage", hostile.name, check=False)
        assert refused.returncode == 1
        first = (
            refused.stderr.splitlines()[-1]
            if "error: " not in refused.stderr
            else next(line for line in refused.stderr.splitlines() if line.startswith("error: "))
        )
        assert first.startswith("error: ready failed: the instance exited with code 3: ")
        assert "wants posix.system" in first and "refusing to unpickle" in first
        assert not marker.exists() and release.serving() == "sample/2"
    finally:
        release("down", check=False)
