"""Helpers for tests that run the real thing: free ports, service processes, throwaway artifacts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from service.artifact import Manifest, read_manifest, write_json, write_model_file, write_version

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "companies"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no SWITCHYARD_* from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class ServiceProcess:
    """``python -m service`` as a child process on a free port."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None) -> None:
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
    """A real artifact (atomic write, real hash) holding ``model``, with ``source``'s manifest otherwise."""
    base = read_manifest(source)

    def fill(directory: Path, version: int) -> None:
        digest = write_model_file(directory, model)
        data = base.model_dump(mode="json") | {"name": name, "version": version, "artifact": digest.model_dump()}
        data.update(manifest_changes)
        write_json(directory / "manifest.json", Manifest.model_validate(data).model_dump(mode="json"))

    return write_version(models_dir, name, fill)


def predict(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 30.0)
    return httpx.post(url + "/predict", json=body, **kwargs)
