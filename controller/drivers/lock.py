"""One command at a time per run dir: an exclusive flock, released by the kernel if the process dies."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from artifact.safeio import private_dir
from controller.errors import Busy, StateError


def _open(run_dir: Path, fallback: Path) -> int:
    """The lock file in the run dir; beside the sockets when the run dir cannot be written (read-only):
    `status` and `down` must still work there, and every command of this run dir sees the same choice."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StateError(f"cannot take the lock in {run_dir}: {exc.strerror}") from None
    try:
        private_dir(fallback.parent)  # the sockets' folder: ours alone, or refused
        return os.open(fallback, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StateError(
            f"cannot take a lock for {run_dir} (read-only) nor at {fallback}: {exc.strerror or exc}"
        ) from None


@contextlib.contextmanager
def exclusive(run_dir: Path, command: str, timeout: float, fallback: Path) -> Iterator[None]:
    fd = _open(run_dir, fallback)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another command"
                    raise Busy(f"{holder} is still running in {run_dir}; try again when it has finished") from None
                time.sleep(0.05)
        with contextlib.suppress(OSError):  # who holds it is a courtesy: a full disk must not stop a command
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"`release.py {command}` (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
