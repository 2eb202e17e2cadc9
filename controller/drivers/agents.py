"""The agent's processes: started when a deployment needs one, found again by its pid file, stopped by
`down`, and kept alive by its keeper (:func:`keep`), which the agent in turn keeps alive.

The agent (:mod:`controller.agent`) and its keeper watch each other: a dead agent is started again by
the keeper within a second, with a history line; a dead keeper is started again by the agent. Each
holds an exclusive lock on its own file for its whole life, so two agents never run at once. `down`
removes ``agent.json`` first, on which both exit, then stops them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from artifact.safeio import UnsafeFile, read_capped, write_private
from controller.core.facts import Event, Facts, Rollout
from controller.drivers import host
from controller.drivers.store import SqliteStore
from controller.errors import SwitchyardError
from controller.settings import ControllerSettings
from controller.vocabulary import Verb

log = logging.getLogger("switchyard.agent")

KEEPER_INTERVAL = 0.5
READING_CAP = 64 * 1024  # the agent's last reading, as status reads it back


def _files(settings: ControllerSettings) -> tuple[Path, Path]:
    return settings.run_dir / "agent.pid", settings.run_dir / "agent.json"


def running(pid_file: Path, role: str) -> str | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    found = host.handle_of(pid)
    if not host.alive(found) or host.option(pid, "--run-dir") is None:
        return None
    return found if (host.option(pid, "--keeper") is not None) == (role == "keeper") else None


def spawn(run_dir: Path, role: str) -> str:
    argv = [sys.executable, "-m", "controller.agent", "--run-dir", str(run_dir.resolve())]
    if role == "keeper":
        argv.append("--keeper")
    log_file = run_dir / "logs" / f"{role}.log"
    started = host.spawn(argv, log=log_file, env=host.child_env(), cwd=host.PROJECT_ROOT)
    write_pid(run_dir / f"{role}.pid", host.pid_of(started))
    return started


def write_pid(path: Path, pid: int) -> None:
    """Whole or not at all: a reader never sees an empty pid file and takes its process for dead."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)


def needed(settings: ControllerSettings, facts: Facts) -> bool:
    return facts.active is not None and (facts.rollout is not None or settings.supervise)


def handle(settings: ControllerSettings) -> str | None:
    """The running agent's handle, or None."""
    return running(_files(settings)[0], "agent")


def ensure(settings: ControllerSettings, facts: Facts) -> bool:
    """Start the agent if the deployment needs one and none runs; True if it was started."""
    settings_file = _files(settings)[1]
    if not needed(settings, facts):
        return False
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = settings_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(settings.model_dump_json())
    os.replace(tmp, settings_file)
    if handle(settings) is not None:
        return False
    spawn(settings.run_dir, "agent")
    return True


def stop(settings: ControllerSettings) -> bool:
    """Stop the agent and its keeper; True if the agent ran. ``agent.json`` goes first: neither
    starts the other again once it is gone."""
    pid_file, settings_file = _files(settings)
    settings_file.unlink(missing_ok=True)
    keeper_file = settings.run_dir / "keeper.pid"
    keeper = running(keeper_file, "keeper")
    if keeper is not None:
        host.terminate(keeper, grace=5.0)
    keeper_file.unlink(missing_ok=True)
    agent = handle(settings)
    if agent is None:
        return False
    host.terminate(agent, grace=15.0)
    pid_file.unlink(missing_ok=True)
    return True


def holds(lock_file: Path, pid: int) -> bool:
    """Whether process ``pid`` holds the lock on ``lock_file`` (/proc/locks, by the file's inode)."""
    try:
        inode = os.stat(lock_file).st_ino
        locks = Path("/proc/locks").read_text()
    except OSError:
        return False
    return any(
        len(f := line.split()) > 5 and f[4] == str(pid) and f[5].rsplit(":", 1)[-1] == str(inode)
        for line in locks.splitlines()
    )


def hold(lock_file: Path) -> int | None:
    """An exclusive lock held for this process's life (released by the kernel when it dies), or None
    if another process of the same role holds it."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def keep(run_dir: Path, stopping: threading.Event) -> int:
    """The keeper: start the agent again whenever it is found dead, while the deployment lasts."""
    settings_file = run_dir / "agent.json"
    while not stopping.wait(KEEPER_INTERVAL):
        try:
            ControllerSettings.model_validate_json(settings_file.read_text())
        except (OSError, ValueError):
            return 0  # the deployment is gone (or `down` is stopping it)
        if running(run_dir / "agent.pid", "agent") is None:
            started = spawn(run_dir, "agent")
            deadline = time.monotonic() + 10.0
            while host.alive(started) and not holds(run_dir / "agent.lock", host.pid_of(started)):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if running(run_dir / "agent.pid", "agent") != started:
                continue  # another agent held the lock after all (its pid file was being written)
            log.info("the agent was not running; started it again")
            event = Event(Verb.REPAIR, "repaired", reason="the agent was not running; its keeper started it again")
            # no deployment lock: the new agent may hold it for a long heal, and the line must not wait on it
            with contextlib.suppress(SwitchyardError, OSError):
                SqliteStore(run_dir / "state.db", time.time, "keeper (automatic)").record(event)
    return 0


def _window(rollout: Rollout) -> list[object]:
    return list(rollout.window)  # as JSON reads it back


def publish(run_dir: Path, rollout: Rollout, words: str, now: float) -> None:
    """The agent's latest reading of the rollout in progress, for `status` and the console."""
    body = json.dumps({"window": _window(rollout), "at": now, "words": words}).encode()
    tmp = run_dir / f".analysis.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    write_private(tmp, body)
    os.replace(tmp, run_dir / "analysis.json")


def reading(run_dir: Path, rollout: Rollout) -> tuple[float, str] | None:
    """When the agent last read this very rollout step, and what it found; None if it has not."""
    try:
        found = json.loads(read_capped(run_dir / "analysis.json", READING_CAP))
        if found["window"] == _window(rollout):
            return float(found["at"]), str(found["words"])
    except (OSError, UnsafeFile, ValueError, KeyError, TypeError):
        pass
    return None
