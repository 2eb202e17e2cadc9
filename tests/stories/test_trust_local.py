"""The trust boundary between local users, tried on real processes: a socket folder someone else made
first is refused (nothing of ours goes into it), the lock never writes through a planted link, an
instance inherits none of the controller's secrets, and `down` stops what runs whatever happened to
the models folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from artifact.safeio import read_capped
from controller.drivers import host
from controller.settings import ControllerSettings
from support import ENERGY, ROUTERS, Release, predict

OTHER_UID = 54321  # a local user who is not us


@pytest.fixture
def release(models: Path, tmp_path: Path) -> Iterator[Release]:
    deployment = Release(models, tmp_path / "run", "builtin")
    yield deployment
    deployment("down", check=False)
    shutil.rmtree(ControllerSettings(run_dir=deployment.run_dir).socket_dir, ignore_errors=True)


def sockets_of(release: Release) -> Path:
    return ControllerSettings(run_dir=release.run_dir).socket_dir


@pytest.mark.skipif(os.geteuid() != 0, reason="NOT ROOT: cannot make a folder owned by another user")
@pytest.mark.parametrize("planted", ["another user's folder", "a world-writable folder", "a link to a folder"])
def test_a_socket_folder_someone_else_made_first_is_refused(release: Release, tmp_path: Path, planted: str) -> None:
    folder = sockets_of(release)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    if planted == "another user's folder":
        folder.mkdir(mode=0o777)
        os.chmod(folder, 0o777)
        os.chown(folder, OTHER_UID, OTHER_UID)
    elif planted == "a world-writable folder":
        folder.mkdir()
        os.chmod(folder, 0o777)
    else:
        folder.symlink_to(victim)
    try:
        refused = release("up", "sample", "1", check=False)
        assert refused.returncode == 3, refused.stderr
        assert "refusing to use it" in refused.stderr
        assert not list(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else True
        assert not list(victim.iterdir())  # nothing of ours went through the link
    finally:
        if folder.is_symlink():
            folder.unlink()
        else:
            shutil.rmtree(folder, ignore_errors=True)


def test_instances_inherit_none_of_the_controllers_secrets(release: Release) -> None:
    release("up", "sample", "1", AWS_SECRET_ACCESS_KEY="do-not-leak", GITHUB_TOKEN="do-not-leak")
    handle = next(s["handle"] for s in release.status()["slots"] if s["role"] == "live")
    environ = read_capped(Path(f"/proc/{host.pid_of(handle)}/environ"), 1 << 20)
    assert b"do-not-leak" not in environ
    assert b"PATH=" in environ


def test_down_stops_everything_even_pointed_at_another_models_folder(release: Release, tmp_path: Path) -> None:
    release("up", "sample", "1")
    live = next(s["handle"] for s in release.status()["slots"] if s["role"] == "live")
    elsewhere = Release(tmp_path / "empty-models", release.run_dir, release.router, release.port)
    (tmp_path / "empty-models").mkdir()
    status = elsewhere("status", check=False)
    assert "cannot be read" in status.stdout + status.stderr
    stopped = elsewhere("down", check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert not host.alive(live)


@pytest.mark.parametrize("router", ROUTERS)
def test_a_client_cannot_mark_its_requests_as_shadow_copies(models: Path, tmp_path: Path, router: str) -> None:
    """Through either router, a client's X-Switchyard-Shadow never reaches the instance: its request
    is counted as live traffic, so it cannot hide from the canary analysis."""
    from controller.core import analysis

    release = Release(models, tmp_path / "run", router)
    try:
        release("up", "sample", "1")
        live = next(s for s in release.status()["slots"] if s["role"] == "live")

        def counted() -> float:  # the instance's live /predict requests (shadow copies are apart)
            return analysis.parse(httpx.get(live["url"] + "/metrics", timeout=10).text).requests

        before = counted()
        for _ in range(5):
            sent = predict(release.url, ENERGY, headers={"X-Switchyard-Shadow": "1"})
            assert sent.status_code == 200
        assert counted() - before == 5
    finally:
        release("down", check=False)
