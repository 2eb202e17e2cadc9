"""Faults around the state, on real processes: a state file overwritten with garbage, a read-only run
dir (a read-only bind mount) and a full disk (a small tmpfs). Each gives one line and an exit code,
never a traceback; a refusal stops nothing; `status` reports what it can see; `down` stops what runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller import messages
from controller.drivers import host
from controller.settings import ControllerSettings
from support import Release, port_open


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@contextmanager
def mounted(*command: str, target: Path) -> Iterator[None]:
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"MOUNT REFUSED: {' '.join(command)}: {done.stderr.strip()} (these fault tests need root)")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def release(models: Path, tmp_path: Path) -> Iterator[Release]:
    deployment = Release(models, tmp_path / "run", "builtin")
    yield deployment
    deployment("down", check=False)


ROUTERS = [
    pytest.param("nginx", marks=pytest.mark.skipif(shutil.which("nginx") is None, reason="NGINX ABSENT")),
    "builtin",
]


@pytest.mark.parametrize("router", ROUTERS)
def test_a_state_file_overwritten_with_garbage(models: Path, tmp_path: Path, router: str) -> None:
    release = Release(models, tmp_path / "run", router)
    try:
        story_of_a_garbage_state_file(release)
    finally:
        release("down", check=False)


def story_of_a_garbage_state_file(release: Release) -> None:
    release("up", "sample", "1")
    release("promote", "2")
    (release.run_dir / "state.db").write_bytes(b"this is not a database" * 100)
    for leftover in ("state.db-wal", "state.db-shm"):
        (release.run_dir / leftover).unlink(missing_ok=True)

    refused = release("rollback", check=False)
    assert refused.returncode == 1 and "nothing is live" in one_line_error(refused)
    assert release.serving() == "sample/2", "a refusal stopped the live instance"
    assert release.instances() == 2

    status = release.status()
    assert status["phase"] == "Absent" and "stray process(es) run: `down` removes them" in status["reason"]
    history = release.history()
    assert history[0]["outcome"] == "repaired" and "moved aside" in history[0]["reason"]
    assert "the old history is lost" in history[0]["reason"]
    assert list(release.run_dir.glob("state.db.corrupt-*")), "the unreadable file was not kept"

    # up adopts the deployment from what runs: the router's target is live, the other slot the rollback target
    adopted = release("up", "sample", "2")
    assert "adopted sample v2" in adopted.stdout and "v1 (blue) is the rollback target" in adopted.stdout
    status = release.status()
    assert status["phase"] == "Healthy", status
    assert {s["color"]: (s["role"], s["version"]) for s in status["slots"]} == {
        "green": ("live", 2),
        "blue": ("previous", 1),
    }
    release("rollback")
    assert release.serving() == "sample/1"

    release("down")
    assert release.instances() == 0 and not port_open(release.port)


def test_a_read_only_run_dir(release: Release) -> None:
    release("up", "sample", "1")
    run = release.run_dir
    with mounted("mount", "--bind", str(run), str(run), target=run):
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(run)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"MOUNT REFUSED: remount read-only: {remount.stderr.strip()}")
        refused = release("stage", "2", check=False)
        assert refused.returncode == 3 and "read-only" in one_line_error(refused)
        assert release.serving() == "sample/1"

        status = release("status")
        assert status.returncode == 0 and "phase:" in status.stdout and "Traceback" not in status.stderr

        stopped = release("down", check=False)
        assert "Traceback" not in stopped.stderr
        assert release.instances() == 0 and not port_open(release.port), stopped.stdout + stopped.stderr


def test_a_full_disk(release: Release, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk), target=disk):
        small = Release(release.models, disk / "run", "builtin", release.port)
        try:
            small("up", "sample", "1")
            filler = disk / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until full
            refused = small("stage", "2", check=False)
            assert refused.returncode in (1, 3), refused.stderr
            line = one_line_error(refused)
            assert "disk is full" in line or "No space left" in line
            assert small.serving() == "sample/1"
            assert small("status").returncode == 0
            filler.unlink()
        finally:
            small("down", check=False)
        assert small.instances() == 0


@pytest.mark.skipif(shutil.which("nginx") is None, reason="NGINX ABSENT: the orphaned-worker test did not run")
def test_a_killed_nginx_master_leaves_no_orphan_and_up_restores_the_router(models: Path, tmp_path: Path) -> None:
    nginx = Release(models, tmp_path / "run", "nginx")
    try:
        nginx("up", "sample", "1")
        master = int(nginx.status()["router"]["handle"].split(":")[0])
        os.kill(master, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{master}").exists() or "Z" in Path(f"/proc/{master}/stat").read_text())
        orphans = host.group(master, "nginx")
        assert orphans and port_open(nginx.port), "expected nginx's worker to outlive its master and keep the port"
        assert "router is not running" in nginx.status()["reason"]

        restored = nginx("up", "sample", "1")
        assert messages.REPAIR_ROUTER_DOWN.found_in(restored.stderr, kind="nginx")
        assert host.group(master, "nginx") == [], "the orphaned worker still runs"
        status = nginx.status()
        assert status["phase"] == "Healthy" and int(status["router"]["handle"].split(":")[0]) != master
        assert nginx.serving() == "sample/1"
        new_master = int(status["router"]["handle"].split(":")[0])
    finally:
        nginx("down", check=False)
    assert host.group(new_master, "nginx") == [] and not port_open(nginx.port)


def test_down_leaves_no_socket_behind_even_for_a_killed_instance(release: Release) -> None:
    release("up", "sample", "1")
    release("stage", "2")
    staged = next(s for s in release.status()["slots"] if s["role"] == "staged")
    os.kill(int(staged["handle"].split(":")[0]), signal.SIGKILL)
    release("down")
    sockets = ControllerSettings(run_dir=release.run_dir).socket_dir
    assert not list(sockets.glob("*.sock")), f"left behind: {list(sockets.glob('*.sock'))}"


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.05)
