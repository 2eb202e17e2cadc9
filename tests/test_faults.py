"""Faults around the state, on real processes: a state file overwritten with garbage, a read-only run
dir (a read-only bind mount) and a full disk (a small tmpfs). Each gives one line and an exit code,
never a traceback; a refusal stops nothing; `status` reports what it can see; `down` stops what runs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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


def test_a_state_file_overwritten_with_garbage(release: Release) -> None:
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
