"""Instances as local processes: ``python -m service`` in its own session, one log file each."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

from controller.core.facts import Instance
from controller.drivers import host, predictions, shadow
from controller.drivers.backends.base import Found
from controller.settings import ControllerSettings

TAG = "SWITCHYARD_INSTANCE"


class ProcessBackend:
    kind = "process"

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.logs_dir = settings.run_dir / "logs"

    def start(self, *, color: str, version: int, model_dir: Path, sha256: str) -> Instance:
        nonce = uuid.uuid4().hex[:8]
        port = host.free_port()
        sock = host.private_folder(self.settings.socket_dir) / f"{color}-{nonce}.sock"
        env = host.child_env(**{TAG: f"{self.settings.run_id}/{color}/{version}/{nonce}"})
        argv = [
            sys.executable,
            "-m",
            "service",
            "--model",
            str(model_dir.resolve()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--uds",
            str(sock),
            "--workers",
            str(self.settings.instance_workers),
            "--cpu-affinity",
            self.settings.cpu_affinity(color),
            "--shadow-dir",
            str(shadow.ensure_folder(self.settings)),
            *self.settings.instance_trust_args(),
            *predictions.instance_args(self.settings, color),
        ]
        handle = host.spawn(argv, log=self._log(color, version, nonce), env=env, cwd=host.PROJECT_ROOT)
        return Instance(
            color=color, version=version, handle=f"{handle}:{nonce}", port=port, socket=str(sock), sha256=sha256
        )

    def _log(self, color: str, version: int, nonce: str) -> Path:
        return self.logs_dir / f"{color}-v{version}-{nonce}.log"

    @staticmethod
    def _proc(handle: str) -> str:
        return handle.rsplit(":", 1)[0]

    def stop(self, handle: str) -> None:
        host.terminate(self._proc(handle), grace=15.0)
        # A service that exits cleanly removes its socket; one killed, or stopped while starting, cannot.
        nonce = handle.rsplit(":", 1)[1]
        for stale in self.settings.socket_dir.glob(f"*-{nonce}.sock"):
            stale.unlink(missing_ok=True)

    def alive(self, handle: str) -> bool:
        return host.alive(self._proc(handle))

    def close_router_connections(self, handle: str) -> None:
        if self.alive(handle):
            os.kill(host.pid_of(handle), signal.SIGUSR1)

    def exit_code(self, handle: str) -> int | None:
        return host.exit_code(self._proc(handle))

    def logs(self, handle: str, lines: int = 12) -> str:
        nonce = handle.rsplit(":", 1)[1]
        matches = sorted(self.logs_dir.glob(f"*-{nonce}.log"))
        return host.tail(matches[0], lines) if matches else ""

    def adopt(self, found: Found, sha256: str) -> Instance | None:
        """A running instance whose record was lost: its own command line says its port and socket."""
        pid = host.pid_of(found.handle)
        port, sock = host.option(pid, "--port"), host.option(pid, "--uds")
        if port is None or sock is None:
            return None
        return Instance(found.color, found.version, found.handle, int(port), sock, sha256)

    def running(self) -> list[Found]:
        found = []
        for pid, tag in host.tagged(TAG, f"{self.settings.run_id}/").items():
            _, color, version, nonce = tag.split("/")
            found.append(Found(handle=f"{host.handle_of(pid)}:{nonce}", color=color, version=int(version)))
        return found
