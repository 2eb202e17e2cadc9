"""Files and folders where someone else may write: capped reads without links, private folders, the
lock's fallback, and the sandboxed systemd unit."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from artifact.safeio import UnsafeFile, private_dir, read_capped
from controller.settings import ControllerSettings

OTHER_UID = 54321  # a local user who is not us


def test_an_own_folder_that_others_could_read_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "sockets"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    private_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_the_lock_fallback_never_writes_through_a_planted_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.drivers import lock
    from controller.errors import StateError

    sockets = private_dir(tmp_path / "sockets")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (sockets / "lock").symlink_to(victim)
    run_dir = tmp_path / "run"
    real_open = os.open

    def read_only_run_dir(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if Path(path).parent == run_dir:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, mode)

    monkeypatch.setattr(lock.os, "open", read_only_run_dir)
    with pytest.raises(StateError, match="nor at"), lock.exclusive(run_dir, "down", 1.0, sockets / "lock"):
        pass
    assert victim.read_text() == "precious"


def test_read_capped_refuses_what_is_not_a_plain_small_file(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(UnsafeFile, match="more than the 10"):
        read_capped(tmp_path / "big", 10)
    (tmp_path / "link").symlink_to(tmp_path / "big")
    with pytest.raises(UnsafeFile, match="symbolic link"):
        read_capped(tmp_path / "link", 1000)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        read_capped(tmp_path, 1000)
    assert read_capped(tmp_path / "big", 100) == b"x" * 100


def test_the_systemd_unit_runs_as_the_deployments_owner_in_a_sandbox(tmp_path: Path) -> None:
    from controller.cli.render import unit

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(run_dir, OTHER_UID, OTHER_UID)
    text = unit(ControllerSettings(run_dir=run_dir))
    lines = text.splitlines()
    owner = str(OTHER_UID) if os.geteuid() == 0 else os.environ.get("USER", "")
    assert any(line == f"User={owner}" or (line.startswith("User=") and line != "User=root") for line in lines)
    assert {"NoNewPrivileges=yes", "ProtectSystem=strict", "RestrictSUIDSGID=yes"} <= set(lines)
    (writable,) = [line for line in lines if line.startswith("ReadWritePaths=")]
    assert str(run_dir.resolve()) in writable
