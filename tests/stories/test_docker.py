"""Containers for real: build the images, `docker compose up`, then release.py --backend docker.

Images are built by scripts/build-images from local Debian base images (no registry here); set
DOCKER_TEST_REGISTRY=1 to build from python:3.11-slim / nginx:1.27 instead. Skipped, loudly, only
where no Docker engine answers.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ENERGY, ROOT, Load, Release, clean_env, router_port, sign, write_manifest

# The first test builds the images (debootstrap on a new machine): more than the default 300 s. In a
# parallel run they all go to one worker (xdist_group), so the images are built once, by one process.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800), pytest.mark.xdist_group("docker")]


def _engine() -> Any:
    try:
        import docker

        engine = docker.from_env(timeout=10)
        engine.ping()
        return engine
    except Exception as exc:  # any failure to reach the engine means: no docker here
        pytest.skip(f"DOCKER ABSENT: no Docker engine answers ({exc}); the container tests did not run")


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    _engine()
    env = clean_env()
    if not os.environ.get("DOCKER_TEST_REGISTRY"):
        env["LOCAL_BASE"] = "1"
    result = subprocess.run(["scripts/build-images"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)


@pytest.fixture
def deployment(images: dict[str, str], models: Path) -> Iterator[tuple[Release, dict[str, str]]]:
    """A compose project of its own: unique labels, network, ports, socket folder and models copy."""
    engine = _engine()
    scratch = Path(tempfile.mkdtemp(prefix="switchyard-docker-", dir="/tmp"))
    shutil.copytree(models, scratch / "models")
    subprocess.run(["chmod", "-R", "a+rX", str(scratch)], check=True)  # the service runs as uid 10001
    project = f"sytest{uuid.uuid4().hex[:6]}"
    env = {
        **images,
        "SWITCHYARD_MODELS_DIR": str(scratch / "models"),
        "SWITCHYARD_DOCKER_SOCKET_DIR": str(scratch / "sockets"),
        "SWITCHYARD_DOCKER_PROJECT": project,
        "SWITCHYARD_DOCKER_NETWORK": project,
        "SWITCHYARD_MODEL_NAME": "sample",
        "SWITCHYARD_MODEL_VERSION": "1",
        "SWITCHYARD_BACKEND": "docker",
    }
    release = Release(scratch / "models", scratch / "run", "auto", router_port())
    env["SWITCHYARD_ROUTER_PORT"] = str(release.port)
    env["SWITCHYARD_RUN_DIR"] = str(release.run_dir)  # compose mounts its shadow folder
    yield release, env
    release("down", check=False, **env)
    compose(env, project, "down", "--remove-orphans", check=False)
    for container in engine.containers.list(all=True, filters={"label": f"switchyard.project={project}"}):
        container.remove(force=True)
    shutil.rmtree(scratch, ignore_errors=True)


def compose(env: dict[str, str], project: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    result = subprocess.run(
        [*binary, "-p", project, *args], cwd=ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def wait_serving(url: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.post(url + "/predict", json=ENERGY, timeout=5)
            if response.status_code == 200:
                return response.headers["x-model-version"]
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"nothing served {url}/predict within {timeout}s")


def labelled(project: str, role: str) -> list[Any]:
    return _engine().containers.list(filters={"label": [f"switchyard.project={project}", f"switchyard.role={role}"]})


def test_compose_up_then_release_drives_containers_under_load(deployment: tuple[Release, dict[str, str]]) -> None:
    release, env = deployment
    project = env["SWITCHYARD_DOCKER_PROJECT"]
    # Given `docker compose up` serves v1 through the nginx container
    compose(env, project, "up", "-d")
    assert wait_serving(release.url) == "sample/1"

    # When release.py takes over, the compose deployment is adopted, not replaced
    adopted = release("up", "sample", "1", **env)
    assert "adopted" in adopted.stdout
    (blue,) = labelled(project, "instance")
    assert blue.labels["switchyard.color"] == "blue"

    # Then 10 promote / rollback flips under 16 keep-alive clients lose no request
    with Load(release.url, threads=16) as load:
        for i in range(10):
            release(*(("promote", "2") if i % 2 == 0 else ("rollback",)), **env)
            assert release.serving() == ("sample/2" if i % 2 == 0 else "sample/1")
            time.sleep(0.2)
    assert len(load.results) > 100 and load.failures() == []

    status = json.loads(release("status", "--json", **env).stdout)
    assert status["phase"] == "Healthy" and status["router"]["kind"] == "docker-nginx"
    colors = {c.labels["switchyard.color"]: c.labels["switchyard.version"] for c in labelled(project, "instance")}
    assert colors == {"blue": "1", "green": "2"}
    assert all(c.attrs["Config"]["User"].split(":")[0] == "10001" for c in labelled(project, "instance"))

    # The containers the backend starts run with least privilege, and share folders nobody else can write
    (green,) = [c for c in labelled(project, "instance") if c.labels["switchyard.color"] == "green"]
    host_config = green.attrs["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"] and host_config["ReadonlyRootfs"] is True
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    assert host_config["Memory"] > 0 and host_config["PidsLimit"] == 256
    (router,) = labelled(project, "router")
    assert "no-new-privileges:true" in (router.attrs["HostConfig"]["SecurityOpt"] or [])
    for folder, mode in ((env["SWITCHYARD_DOCKER_SOCKET_DIR"], 0o755), (str(release.run_dir / "shadow"), 0o700)):
        info = os.stat(folder)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (10001, mode), folder

    # And down removes what the backend runs, and nothing else
    release("down", **env)
    assert labelled(project, "instance") == [] and labelled(project, "router") == []


def test_a_container_that_fails_its_checks_is_refused_and_removed(deployment: tuple[Release, dict[str, str]]) -> None:
    release, env = deployment
    project = env["SWITCHYARD_DOCKER_PROJECT"]
    old = release.models / "sample" / "6"  # an artifact built for another scikit-learn: the service exits 3
    shutil.copytree(release.models / "sample" / "2", old)
    data = json.loads((old / "manifest.json").read_text())
    data.update(version=6)
    data["runtime"]["sklearn"] = "0.24.2"
    write_manifest(old, data)
    sign(old)  # built and signed elsewhere, with another scikit-learn
    subprocess.run(["chmod", "-R", "a+rX", str(old)], check=True)

    release("up", "sample", "1", **env)
    with Load(release.url, threads=8) as load:
        slow = release("stage", "2", check=False, SWITCHYARD_READY_TIMEOUT="0.3", **env)
        assert slow.returncode == 1 and "error: ready failed: not ready within 0.3s" in slow.stderr
        foreign = release("stage", "3", check=False, **env)  # its model class exists only in the tests
        assert foreign.returncode == 1 and "error: ready failed: the instance exited with code 3" in foreign.stderr
        assert "No module named 'testmodels'" in foreign.stderr  # the container's last log lines
        old_sklearn = release("stage", "6", check=False, **env)
        assert old_sklearn.returncode == 1 and "exited with code 3" in old_sklearn.stderr
        assert "refusing to unpickle across minor versions" in old_sklearn.stderr
    assert load.failures() == [] and {r[2] for r in load.results} == {"sample/1"}
    history = json.loads(release("history", "--json", **env).stdout)
    assert [(h["to_version"], h["step"]) for h in history if h["outcome"] == "failed"] == [
        (2, "ready"),
        (3, "ready"),
        (6, "ready"),
    ]
    remaining = {
        c.labels["switchyard.version"]
        for c in _engine().containers.list(
            all=True, filters={"label": [f"switchyard.project={project}", "switchyard.role=instance"]}
        )
    }
    assert remaining == {"1"}

    release("down", **env)  # and nothing is left behind: not even the network the backend created
    assert not _engine().networks.list(names=[env["SWITCHYARD_DOCKER_NETWORK"]])


def test_shadow_traffic_between_containers(deployment: tuple[Release, dict[str, str]]) -> None:
    release, env = deployment
    release("up", "sample", "1", **env)
    release("stage", "2", SWITCHYARD_SHADOW_MIN_REQUESTS="40", **env)
    with httpx.Client(timeout=10) as client:
        for i in range(40):
            body = {"description": f"{ENERGY['description']} Request {i}."}
            assert client.post(release.url + "/predict", json=body).headers["x-model-version"] == "sample/1"
    deadline = time.monotonic() + 60
    while (found := json.loads(release("evidence", "--json", **env).stdout))["requests"] < 40:
        assert time.monotonic() < deadline, found
        time.sleep(0.3)
    assert found["compared"] == 40 and found["errors"] == 0 and found["gate"]["passes"]
    (records,) = (release.run_dir / "shadow").glob("*.jsonl")
    assert records.stat().st_mode & 0o077 == 0  # owner-only, written by the container's user
    out = release("promote", SWITCHYARD_SHADOW_MIN_REQUESTS="40", **env)
    assert "evidence: 40 request(s) compared" in out.stderr
    assert release.serving() == "sample/2"


def test_a_canary_between_containers_walks_its_weights(deployment: tuple[Release, dict[str, str]]) -> None:
    release, env = deployment
    agent = {**env, "SWITCHYARD_WATCH_SECONDS": "0"}
    release("up", "sample", "1", **agent)
    release("stage", "2", "--no-shadow", **agent)
    with Load(release.url, threads=8) as load:
        release("promote", "--canary", "25,100", "--step-seconds", "2", **agent)
        deadline = time.monotonic() + 120
        while not any(h["action"] == "promote" for h in json.loads(release("history", "--json", **env).stdout)):
            assert time.monotonic() < deadline, (release.run_dir / "logs" / "agent.log").read_text()[-3000:]
            time.sleep(0.3)
    assert load.failures() == [] and {r[2] for r in load.results} == {"sample/1", "sample/2"}
    assert release.serving() == "sample/2"
    history = json.loads(release("history", "--json", **env).stdout)
    assert history[-2]["action"] == "canary" and history[-2]["reason"].startswith("25% of live traffic")
    assert history[-1]["actor"] == "agent (automatic)" and "canary analysis passed" in history[-1]["reason"]
