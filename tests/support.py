"""Helpers for tests that run the real thing: free ports, service processes, throwaway artifacts."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from artifact.manifest import FileDigest, Manifest, read_manifest
from artifact.registry import json_bytes, publish
from artifact.signing import Trust, create_key, key_id, load_private, signature_file
from controller.drivers import host
from controller.drivers.backends.process import ProcessBackend
from controller.drivers.host import child_env, free_port
from controller.settings import ControllerSettings

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "companies"


# One signing key for the whole test session, as a team has one: every artifact the tests make is
# signed with it, and every service and controller the tests start trusts it (and the tests' own
# throwaway model classes, in testmodels).
KEYS = Path(tempfile.mkdtemp(prefix="switchyard-test-keys-"))
TRUSTED_KEYS = KEYS / "trusted"


@functools.cache
def signer() -> Ed25519PrivateKey:
    create_key(KEYS / "signing.key", TRUSTED_KEYS)
    for path in (KEYS, TRUSTED_KEYS, *TRUSTED_KEYS.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)  # containers read the public keys as another user
    return load_private(KEYS / "signing.key")


def trust() -> Trust:
    signer()
    return Trust.from_folder(TRUSTED_KEYS)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no SWITCHYARD_* from the developer's shell; the tests'
    key trusted and used; the tests' own modules (throwaway model classes) importable and allowed."""
    signer()
    trust_env = {
        "SWITCHYARD_SIGNING_KEY": str(KEYS / "signing.key"),
        "SWITCHYARD_TRUSTED_KEYS": str(TRUSTED_KEYS),
        "SWITCHYARD_TRUSTED_MODULES": "testmodels",
        # Stories that stage and promote without sending traffic in between would meet the evidence
        # gate's minimum; the shadow stories (test_shadow.py) set their own rules.
        "SWITCHYARD_SHADOW_MIN_REQUESTS": "0",
        # The agent's watch and supervision act on their own; the stories that are about them
        # (test_canary.py) switch them on, the others keep the deployment still.
        "SWITCHYARD_WATCH_SECONDS": "0",
        "SWITCHYARD_SUPERVISE": "false",
    }
    return child_env(**{"PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), **trust_env, **extra})


def cpus_of(pid: int) -> set[int]:
    """Every CPU any thread of ``pid`` may run on, as the kernel reports it."""
    return {cpu for task in Path(f"/proc/{pid}/task").iterdir() for cpu in os.sched_getaffinity(int(task.name))}


def router_port() -> int:
    """A free port below the kernel's ephemeral range, for a router that must bind the same port again
    after it is killed: a port from that range (what binding port 0 gives) can meanwhile be lent to
    any outgoing connection on the machine as its own port."""
    for _ in range(100):
        port = random.randrange(20000, 32000)
        if host.port_free("127.0.0.1", port):
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class ServiceProcess:
    """``python -m service`` as a child process on a free port."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"service-{self.port}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--model", str(model), "--port", str(self.port), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env or clean_env(),
            cwd=ROOT,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"service not ready after {timeout}s:\n{self.output()}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def artifact_with_model(source: Path, models_dir: Path, name: str, model: Any, **manifest_changes: Any) -> Path:
    """A real artifact (published, signed and verified as the trainer does) holding ``model``, with
    ``source``'s manifest otherwise."""
    base = read_manifest(source)

    def manifest_for(version: int, digest: FileDigest) -> Manifest:
        data = base.model_dump(mode="json") | {"name": name, "version": version, "artifact": digest.model_dump()}
        return Manifest.model_validate(data | manifest_changes)

    return publish(models_dir, name, model, manifest_for, signer())[0]


def write_manifest(version_dir: Path, data: dict[str, Any]) -> None:
    """Overwrite a version's manifest, as someone who can write into the models folder would."""
    (version_dir / "manifest.json").write_bytes(json_bytes(Manifest.model_validate(data).model_dump(mode="json")))


def sign(version_dir: Path, key: Ed25519PrivateKey | None = None) -> str:
    """Sign the manifest as it is on disk now, as someone holding the key would: for artifacts that
    are wrong in another way (a forged hash, another runtime)."""
    key = key or signer()
    data = (version_dir / "manifest.json").read_bytes()
    (version_dir / "manifest.sig").write_bytes(signature_file(data, key))
    return key_id(key.public_key())


def misbehaving(registry: Path, root: Path, behaviours: list[dict[str, Any]]) -> list[str]:
    """sample/1 and sample/2 copied from ``registry`` into ``root``, then one version a behaviour of
    sample/2's model wrapped in ``testmodels.OnUnseen`` (3, 4, ...). Returns the golden texts, on which
    those versions behave (so they pass a stage)."""
    import testmodels
    from artifact.trust import load_model

    shutil.copytree(registry / "sample", root / "sample")
    source = root / "sample" / "2"
    inner, manifest = load_model(source, trust(), modules=("testmodels",))
    known = [row.input["description"] for row in manifest.golden]
    for behaviour in behaviours:
        artifact_with_model(source, root, "sample", testmodels.OnUnseen(inner, known, **behaviour))
    return known


ROUTERS = [
    pytest.param(
        "nginx",
        marks=pytest.mark.skipif(
            shutil.which("nginx") is None, reason="NGINX ABSENT: the nginx router tests did not run"
        ),
    ),
    "builtin",
]


def predict(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 30.0)
    return httpx.post(url + "/predict", json=body, **kwargs)


ENERGY = {"description": "We explore for crude oil and natural gas and operate pipelines and refineries."}


@dataclass
class Release:
    """The release.py command line for one deployment (its own run dir and router port)."""

    models: Path
    run_dir: Path
    router: str
    port: int = field(default_factory=router_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable,
            str(ROOT / "controller" / "release.py"),
            *args,
            "--models-dir",
            str(self.models),
            "--run-dir",
            str(self.run_dir),
            "--router",
            self.router,
            "--port",
            str(self.port),
        ]

    def __call__(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        env.setdefault("SWITCHYARD_READY_TIMEOUT", "20")
        result = subprocess.run(
            self.command(*args), capture_output=True, text=True, env=clean_env(**env), cwd=ROOT, timeout=120
        )
        if check:
            assert result.returncode == 0, f"release.py {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def spawn(self, *args: str, pause_at: str | None = None, **env: str) -> subprocess.Popen[str]:
        """A release.py command in the background; with ``pause_at`` it stops before that step of its
        plan (tests/paused_release.py) and says so on stdout."""
        argv = self.command(*args)
        if pause_at is not None:
            argv[1:2] = [str(TESTS / "paused_release.py"), pause_at]
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(**env), cwd=ROOT
        )

    def status(self) -> dict[str, Any]:
        return json.loads(self("status", "--json").stdout)

    def history(self) -> list[dict[str, Any]]:
        return json.loads(self("history", "--json").stdout)

    def serving(self) -> str | None:
        response = httpx.post(self.url + "/predict", json=ENERGY, timeout=10)
        assert response.status_code == 200, response.text
        return response.headers.get("x-model-version")

    def instances(self) -> int:
        return len(ProcessBackend(ControllerSettings(run_dir=self.run_dir)).running())


class Clients:
    """``threads`` load threads (:meth:`_run`, each given its index) until stopped or out of time; a
    context manager that starts them and, on leaving, stops and joins them."""

    def __init__(self, url: str, threads: int, max_seconds: float) -> None:
        self.url = url + "/predict"
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self.lock = threading.Lock()

    def _run(self, index: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)


class Load(Clients):
    """``threads`` clients, each on one keep-alive connection with retries off, until stopped."""

    def __init__(self, url: str, threads: int = 16, max_seconds: float = 240.0) -> None:
        super().__init__(url, threads, max_seconds)
        self.results: list[tuple[float, int, str | None, str | None]] = []  # start, status, version, error

    def _run(self, index: int) -> None:
        transport = httpx.HTTPTransport(retries=0)
        with httpx.Client(transport=transport, timeout=15.0) as client:
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                started = time.monotonic()
                try:
                    response = client.post(self.url, json=ENERGY)
                    row = (started, response.status_code, response.headers.get("x-model-version"), None)
                except httpx.HTTPError as exc:
                    row = (started, 0, None, repr(exc))
                with self.lock:
                    self.results.append(row)

    def failures(self) -> list[tuple[float, int, str | None, str | None]]:
        return [r for r in self.results if r[1] != 200 or r[2] not in ("sample/1", "sample/2")]


def cli(release: Release, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """release.py for this deployment's run dir and registry only (the console has --host/--port of
    its own), with ``stdin`` as its standard input (a password is never an argument)."""
    command = [sys.executable, str(ROOT / "controller" / "release.py"), *args]
    return subprocess.run(
        [*command, "--run-dir", str(release.run_dir), "--models-dir", str(release.models)],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(**env),
        cwd=ROOT,
        timeout=120,
    )
