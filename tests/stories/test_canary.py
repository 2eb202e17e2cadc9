"""Canary steps, the watch after a deploy, and the agent that supervises, as the team meets them:
real service processes, a real nginx or the builtin router, the detached agent, keep-alive load.

Figures a story measures (failed requests before an automatic rollback, the gap a dead live instance
leaves) are printed (`pytest -s` shows them) and bounded by what the settings promise, not by a
deadline.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import itertools
import os
import random
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller import messages
from controller.drivers import host
from support import ROOT, ROUTERS, Clients, Release, clean_env, misbehaving

ONE_ROUTER = "nginx" if shutil.which("nginx") else "builtin"
AGENT = {"SWITCHYARD_SUPERVISE": "true", "SWITCHYARD_WATCH_SECONDS": "0"}
MIN_REQUESTS = 50  # the fixed line the sequential test replaced decided here: it must do no worse
MIN_SAMPLES = 200  # the default analysis_min_samples: a step's pass
GOLDEN: set[str] = set()
with (ROOT / "data" / "sample" / "companies.csv").open() as _fh:
    TEXTS = [row["description"] for row in csv.DictReader(_fh)]
# The file is sorted by class; real traffic is not: in order, the first seconds of a watch would be
# one mix of classes and the next another, and the label signal would rightly call that a shift.
random.Random(3).shuffle(TEXTS)


@pytest.fixture(scope="module")
def rollout_models(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample/1 rules, sample/2 tf-idf, and candidates that pass a stage but on live traffic
    3 fail one request in five, 4 take 100 ms a call (far more than 5x slower), 5 answer Utilities,
    6 take 4 ms more a call (about 5x what the rules model, live in these tests, takes)."""
    root = tmp_path_factory.mktemp("rollout-models")
    behaviours = [{"fail": True, "fail_every": 5}, {"delay": 0.1}, {"label": "Utilities"}, {"delay": 0.004}]
    GOLDEN.update(misbehaving(registry, root, behaviours))
    return root


@pytest.fixture
def deployment(rollout_models: Path, tmp_path: Path) -> Iterator[Any]:
    made: list[Release] = []

    def make(router: str) -> Release:
        made.append(Release(rollout_models, tmp_path / "run", router))
        return made[-1]

    yield make
    for each in made:
        each("down", check=False)


class Traffic(Clients):
    """``threads`` keep-alive clients with retries off, each sending real descriptions in turn, until
    stopped: (wall time, status, version) a request."""

    def __init__(self, url: str, threads: int = 16, max_seconds: float = 180.0) -> None:
        super().__init__(url, threads, max_seconds)
        self.rows: list[tuple[float, int, str | None]] = []
        self.errors: list[str] = []  # what each failed request got, for the assertion message

    def _run(self, index: int) -> None:
        texts = [t for t in TEXTS if t not in GOLDEN]
        i = index * 37
        with httpx.Client(transport=httpx.HTTPTransport(retries=0), timeout=15.0) as client:
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                i += 1
                sent = time.time()
                error = None
                try:
                    response = client.post(self.url, json={"description": texts[i % len(texts)]})
                    row = (sent, response.status_code, response.headers.get("x-model-version"))
                    if response.status_code != 200:
                        error = f"{sent:.3f} {response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    row, error = (sent, 0, None), f"{sent:.3f} {exc!r}"
                with self.lock:
                    self.rows.append(row)
                    if error:
                        self.errors.append(error)

    def failed(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t, status, _ in self.rows if since <= t < until and status != 200)

    def share(self, version: str, since: float, until: float) -> tuple[float, int]:
        rows = [v for t, status, v in self.rows if since <= t < until and status == 200]
        return (sum(v == version for v in rows) / len(rows) if rows else float("nan")), len(rows)


def at(row: dict[str, Any]) -> float:
    return datetime.fromisoformat(row["at"]).timestamp()


def wait_history(release: Release, match: Any, timeout: float = 120.0) -> dict[str, Any]:
    """The first history line ``match`` accepts, waiting for the agent to write it."""
    deadline = time.monotonic() + timeout
    while True:
        rows = release.history()
        found = [row for row in rows if match(row)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, [(r["action"], r["outcome"], r["reason"]) for r in rows[-4:]]
        time.sleep(0.3)


@pytest.mark.parametrize("router", ROUTERS)
def test_a_healthy_canary_walks_its_steps_under_load(deployment: Any, router: str) -> None:
    release: Release = deployment(router)
    release("up", "sample", "1", **AGENT)
    release("stage", "2", "--no-shadow", **AGENT)
    with Traffic(release.url) as traffic:
        out = release("promote", "--canary", "5,25,50,100", "--step-seconds", "3", **AGENT)
        assert messages.CANARY_TAKES.found_in(out.stdout, weight=5)
        done = wait_history(release, lambda r: r["action"] == "promote" and r["outcome"] == "ok")
        time.sleep(1.0)  # a second of traffic after the last step
    assert "canary analysis passed" in done["reason"] and done["actor"] == "agent (automatic)"
    assert traffic.failed() == 0, traffic.errors
    steps = [r for r in release.history() if r["action"] == "canary"]
    assert [r["reason"].split("%")[0] for r in steps] == ["5", "25", "50"]
    bounds = [at(r) for r in steps] + [at(done)]
    for (start, end), weight in zip(itertools.pairwise(bounds), (5, 25, 50), strict=True):
        share, count = traffic.share("sample/2", start + 0.3, end)  # after connections have moved
        print(f"{router}: weight {weight}%, measured {share:.1%} of {count} requests")
        assert count >= MIN_SAMPLES and abs(share * 100 - weight) <= 5
    after, count = traffic.share("sample/2", bounds[-1] + 0.3, float("inf"))
    assert after == 1.0 and count > 0
    assert release.status()["phase"] == "Healthy"


BAD = [
    pytest.param("3", "worse on errors", id="fails-20%"),
    pytest.param("4", "worse on latency", id="slow"),
    pytest.param("5", "worse on predictions", id="one-label"),
]


# During a canary both slots answer in the same seconds on the same cores, so even a millisecond model
# made five times slower shows; two clients, so that a request's time is the model's more than the
# queue's. (The watch compares with the old version's record, taken under other load: there the
# simulation in bench/decisions.py and the unit tests carry the millisecond case.)
FIVE_TIMES_A_1_MS_MODEL = pytest.param("6", "worse on latency", id="five-times-a-1-ms-model")


@pytest.mark.parametrize(("version", "signal_name"), [*BAD, FIVE_TIMES_A_1_MS_MODEL])
def test_a_bad_canary_is_rolled_back_by_the_agent(deployment: Any, version: str, signal_name: str) -> None:
    release: Release = deployment(ONE_ROUTER)
    release("up", "sample", "1", **AGENT)
    release("stage", version, "--no-shadow", **AGENT)
    with Traffic(release.url, threads=2 if version == "6" else 16) as traffic:
        started = time.time()
        release("promote", "--canary", "5,25,50,100", "--step-seconds", "30", **AGENT)
        aborted = wait_history(release, lambda r: r["action"] in ("abort", "promote"))
        time.sleep(1.0)
    assert aborted["reason"].startswith(f"automatic rollback: {signal_name}"), aborted["reason"]
    # a regression this large is found at the first step; a millisecond one before the canary ends (a
    # step in which noise hid it passes, and the next one looks again)
    assert "step 1 of 4" in aborted["reason"] or (version == "6" and "step 4 of 4" not in aborted["reason"])
    assert aborted["actor"] == "agent (automatic)"
    failed = traffic.failed(started)
    print(f"canary of v{version}: {failed} failed client request(s) before the automatic rollback")
    assert failed <= MIN_REQUESTS
    share, _ = traffic.share(f"sample/{version}", at(aborted) + 0.5, float("inf"))
    assert share == 0.0, "requests reached the failed version after the rollback"
    status = release.status()
    assert status["phase"] == "Staged" and next(s for s in status["slots"] if s["role"] == "staged")["version"] == int(
        version
    )


@pytest.mark.parametrize(("version", "signal_name"), BAD)
def test_a_bad_deploy_is_rolled_back_during_the_watch(deployment: Any, version: str, signal_name: str) -> None:
    release: Release = deployment("builtin")
    release("up", "sample", "1", **AGENT)
    release("stage", version, "--no-shadow", **AGENT)
    with Traffic(release.url, threads=8) as traffic:
        time.sleep(2.0)  # v1's own record of live traffic, to compare the new version with
        started = time.time()
        out = release("promote", "--watch-seconds", "60", **AGENT)
        assert messages.WATCHED.found_in(out.stdout, seconds=60)
        rolled = wait_history(release, lambda r: r["action"] == "rollback")
        time.sleep(1.0)
    assert rolled["reason"].startswith(f"automatic rollback: {signal_name}") and "into the watch" in rolled["reason"]
    failed = traffic.failed(started)
    print(f"watch of v{version}: {failed} failed client request(s) before the automatic rollback")
    assert failed <= 4 * MIN_REQUESTS  # all traffic reaches it: a few agent looks' worth beyond the minimum
    share, _ = traffic.share(f"sample/{version}", at(rolled) + 0.5, float("inf"))
    assert share == 0.0
    status = release.status()
    assert status["phase"] == "Staged", "the failed version is parked, not the rollback target"
    refused = release("rollback", check=False)
    assert refused.returncode == 1 and messages.NO_PREVIOUS_SLOT.found_in(refused.stderr)


def test_a_healthy_deploy_under_load_passes_its_whole_watch(deployment: Any) -> None:
    release: Release = deployment("builtin")
    release("up", "sample", "1", **AGENT)
    release("stage", "2", "--no-shadow", **AGENT)
    with Traffic(release.url, threads=8) as traffic:
        time.sleep(2.0)  # v1's record of live traffic
        release("promote", "--watch-seconds", "20", **AGENT)
        reading = _analysis_line(release)  # what a person who looks meanwhile reads
        ended = wait_history(release, lambda r: r["action"] in ("watch", "rollback"))
    assert ended["action"] == "watch" and ended["reason"].startswith("watch passed"), ended["reason"]
    assert reading.startswith(("analysis: no difference found yet over", "analysis: not worse over")), reading
    assert "would show within about" in reading or "not worse over" in reading, reading
    print(reading)
    assert traffic.failed() == 0 and release.serving() == "sample/2"


def _analysis_line(release: Release, timeout: float = 60.0) -> str:
    """The agent's reading of the rollout, as `status` prints it, once every signal could be judged.

    Its first readings may come before the first request of the new window ("nothing to compare
    yet") or within the five seconds the latency test needs ("too few seconds yet"): true, but not
    what this story is about."""
    early = ("nothing to compare yet", "too few seconds yet")
    deadline = time.monotonic() + timeout
    while True:
        lines = [line.strip() for line in release("status", **AGENT).stdout.splitlines()]
        found = [line for line in lines if line.startswith("analysis: ") and not any(e in line for e in early)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, lines
        time.sleep(0.5)


def _pid(handle: str) -> int:
    return host.pid_of(handle)


@pytest.mark.parametrize("router", ROUTERS)
def test_a_killed_live_instance_is_restarted_with_traffic_on_the_other_slot_meanwhile(
    deployment: Any, router: str
) -> None:
    release: Release = deployment(router)
    release("up", "sample", "1", **AGENT)
    release("promote", "2", **AGENT)  # v2 live in green, v1 ready in blue
    live = next(s for s in release.status()["slots"] if s["role"] == "live")
    with Traffic(release.url, threads=8) as traffic:
        time.sleep(0.5)
        killed = time.time()
        os.kill(_pid(live["handle"]), signal.SIGKILL)
        healed = wait_history(release, lambda r: r["action"] == "heal" and r["outcome"] == "ok")
        time.sleep(1.0)
    answered = sorted(t for t, status, _ in traffic.rows if status == 200 and t >= killed - 0.5)
    gap = max(b - a for a, b in itertools.pairwise(answered))
    failed = traffic.failed(killed)
    print(f"{router}: live instance killed: {failed} failed request(s), longest gap between answers {gap:.2f} s")
    assert "restarted v2 in green" in healed["reason"]
    assert any(r["step"] == "failover" for r in release.history()), "history records the fail-over"
    share, count = traffic.share("sample/1", killed + 0.5, at(healed))
    assert count > 0 and share > 0.5, "the other slot answered while the live one restarted"
    share, _ = traffic.share("sample/2", at(healed) + 0.5, float("inf"))
    assert share == 1.0
    assert release.status()["phase"] == "Healthy"


@pytest.mark.parametrize("router", ROUTERS)
def test_a_killed_router_is_restored_by_the_agent_and_by_the_next_command(deployment: Any, router: str) -> None:
    release: Release = deployment(router)
    release("up", "sample", "1", **AGENT)
    first = release.status()["router"]["handle"]
    os.kill(_pid(first), signal.SIGKILL)
    wait_history(release, lambda r: r["step"] == "router" and r["outcome"] == "repaired")
    assert release.status()["phase"] == "Healthy" and release.serving() == "sample/1"

    # without the agent, the next command repairs it instead of failing
    release("down")
    release("up", "sample", "1")  # the tests' default: no agent
    second = release.status()["router"]["handle"]
    os.kill(_pid(second), signal.SIGKILL)
    out = release("stage", "2", "--no-shadow")
    assert messages.REPAIR_ROUTER_DOWN.found_in(out.stderr)
    assert release.status()["phase"] == "Staged" and release.serving() == "sample/1"
    release("promote")
    assert release.serving() == "sample/2"


@contextlib.contextmanager
def _lock_held(run_dir: Path) -> Iterator[None]:
    """The deployment's command lock, held as a long-running command would hold it."""
    fd = os.open(run_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_a_killed_agent_is_started_again_by_its_keeper_and_heals_what_died_meanwhile(deployment: Any) -> None:
    release: Release = deployment("builtin")
    release("up", "sample", "1", **AGENT)
    assert "agent:  watches and supervises" in release("status", **AGENT).stdout
    with Traffic(release.url, threads=4) as traffic:
        first = int((release.run_dir / "agent.pid").read_text())
        live = next(s for s in release.status()["slots"] if s["role"] == "live")
        with _lock_held(release.run_dir):  # a long command runs meanwhile: the keeper's line must not wait on it
            killed = time.time()
            os.kill(first, signal.SIGKILL)
            os.kill(_pid(live["handle"]), signal.SIGKILL)  # and nobody types a command
            kept = wait_history(release, lambda r: "its keeper started it again" in r["reason"])
        healed = wait_history(release, lambda r: r["action"] == "heal" and r["step"] is None)
        time.sleep(1.0)
    print(
        f"agent and live instance killed: {traffic.failed(killed)} failed request(s), healed after "
        f"{at(healed) - killed:.1f} s"
    )
    assert killed <= at(kept) < killed + 10 and at(healed) - killed < 30
    share, count = traffic.share("sample/1", at(healed) + 0.5, float("inf"))
    assert count > 0 and share == 1.0 and traffic.failed(at(healed) + 0.5) == 0
    again = int((release.run_dir / "agent.pid").read_text())
    assert again != first and host.alive(host.handle_of(again))

    # the keeper and the agent killed together: status says so, and the next command starts both again
    keeper = int((release.run_dir / "keeper.pid").read_text())
    os.kill(keeper, signal.SIGKILL)
    os.kill(again, signal.SIGKILL)
    assert "agent:  NOT RUNNING" in release("status", **AGENT).stdout
    release("stage", "2", "--no-shadow", **AGENT)
    assert "agent:  watches and supervises" in release("status", **AGENT).stdout
    assert any(r["reason"] == "the agent was not running; started it again" for r in release.history())
    last = int((release.run_dir / "agent.pid").read_text())
    assert "stopped the agent" in release("down").stdout
    assert not host.alive(host.handle_of(last))
    keeper_pid = release.run_dir / "keeper.pid"
    assert not keeper_pid.exists() or not host.alive(host.handle_of(int(keeper_pid.read_text())))


def test_render_systemd_restores_the_deployment_after_a_reboot(deployment: Any, tmp_path: Path) -> None:
    release: Release = deployment(ONE_ROUTER)
    release("up", "sample", "1")
    release("promote", "2")
    out = release("render", "systemd", "--out", str(tmp_path / "unit"))
    (unit,) = (tmp_path / "unit").glob("switchyard-*.service")
    text = unit.read_text()
    assert "Type=oneshot" in text and "RemainAfterExit=yes" in text and "WantedBy=multi-user.target" in text
    assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text and "User=" in text
    assert str(unit) in out.stdout

    # a reboot: every process of the deployment is gone, its state remains
    status = release.status()
    for handle in [s["handle"] for s in status["slots"]] + [status["router"]["handle"]]:
        pid = _pid(handle)
        os.kill(pid, signal.SIGKILL)
        if release.router == "nginx":
            host.kill_group(pid, "nginx")  # its workers die with the machine too
    assert release.status()["phase"] == "Degraded"

    # what systemd runs at boot: the unit's environment and its ExecStart
    env = clean_env()
    for line in text.splitlines():
        if line.startswith("Environment="):
            key, _, value = shlex.split(line.removeprefix("Environment="))[0].partition("=")
            env[key] = value
    command = next(line.removeprefix("ExecStart=") for line in text.splitlines() if line.startswith("ExecStart="))
    result = subprocess.run(shlex.split(command), env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "restarted v2 in green, v1 in blue" in result.stdout
    assert release.status()["phase"] == "Healthy" and release.serving() == "sample/2"


def test_a_canary_killed_mid_step_is_aborted_by_the_agent(deployment: Any) -> None:
    release: Release = deployment("builtin")
    release("up", "sample", "1", **AGENT)
    release("stage", "2", "--no-shadow", **AGENT)
    with Traffic(release.url, threads=8) as traffic:
        release("promote", "--canary", "25,100", "--step-seconds", "60", **AGENT)
        canary = next(s for s in release.status()["slots"] if s["role"] == "staged")
        os.kill(_pid(canary["handle"]), signal.SIGKILL)
        killed = time.time()
        aborted = wait_history(release, lambda r: r["action"] == "abort")
        time.sleep(1.0)
    assert aborted["reason"].startswith("automatic rollback: the canary is not running (step 1 of 2")
    print(f"canary killed: {traffic.failed(killed)} failed request(s) until the abort")
    share, count = traffic.share("sample/1", at(aborted) + 0.5, float("inf"))
    assert count > 0 and share == 1.0 and traffic.failed(at(aborted) + 0.5) == 0
    status = release.status()
    assert status["phase"] == "Degraded" and "staged slot" in status["reason"]  # the parked canary is dead
    release("stage", "2", "--no-shadow", **AGENT)  # the next stage replaces it
    assert release.status()["phase"] == "Staged" and release.instances() == 2
