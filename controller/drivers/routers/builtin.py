"""The built-in router: :mod:`builtin_router` as a process, switched over its admin endpoint
(loopback only, bearer token from a 0600 file in the run dir)."""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

import httpx

from controller.core.facts import Router
from controller.drivers import host, loopback
from controller.drivers.routers.base import stray_from_pid_file, wait_listening
from controller.errors import NeedsOperator
from controller.settings import ControllerSettings


class BuiltinRouter:
    kind = "builtin"

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.token_file = settings.run_dir / "router.token"
        self.log = settings.run_dir / "logs" / "router.log"
        self.pid_file = settings.run_dir / "router.pid"

    def _token(self) -> str:
        if not self.token_file.exists():
            self.token_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return self.token_file.read_text().strip()

    def start(self, upstream: str) -> Router:
        self._token()
        admin_port = host.free_port()
        env = host.child_env()
        argv = [
            sys.executable,
            "-m",
            "builtin_router",
            "--listen",
            f"{self.settings.router_host}:{self.settings.router_port}",
            "--admin-port",
            str(admin_port),
            "--token-file",
            str(self.token_file.resolve()),
            "--upstream",
            upstream,
            "--pid-file",
            str(self.pid_file.resolve()),
            "--header-timeout",
            str(self.settings.router_header_timeout),
            "--body-timeout",
            str(self.settings.router_body_timeout),
            "--max-connections",
            str(self.settings.router_max_connections),
        ]
        handle = host.spawn(argv, log=self.log, env=env, cwd=host.PROJECT_ROOT)
        router = Router(
            kind=self.kind,
            host=self.settings.router_host,
            port=self.settings.router_port,
            handle=handle,
            admin_port=admin_port,
        )
        wait_listening(router.url, lambda: host.alive(handle), 10.0, host.tail(self.log))
        return router

    def _admin(self, router: Router, method: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return loopback.client().request(
                method,
                f"http://127.0.0.1:{router.admin_port}/upstream",
                json=body,
                headers={"Authorization": f"Bearer {self._token()}"},
                timeout=5.0,
            )
        except httpx.TransportError as exc:
            raise NeedsOperator(f"the builtin router's admin endpoint does not answer: {exc}") from exc

    def point_to(self, router: Router, upstream: str) -> None:
        response = self._admin(router, "PUT", {"upstream": upstream})
        if response.status_code != 200:
            raise NeedsOperator(f"the builtin router refused the flip: {response.status_code} {response.text}")

    def split(self, router: Router, stable: str, canary: str, percent: int) -> bool:
        response = self._admin(router, "PUT", {"upstream": stable, "canary": canary, "weight": percent})
        if response.status_code != 200:
            raise NeedsOperator(f"the builtin router refused the weight: {response.status_code} {response.text}")
        return False  # it draws an upstream for every request, pooled connection or not

    def _routing(self, router: Router) -> dict[str, Any] | None:
        if not self.alive(router):
            return None
        response = self._admin(router, "GET")
        return response.json() if response.status_code == 200 else None

    def current(self, router: Router) -> str | None:
        routing = self._routing(router)
        return routing.get("upstream") if routing else None

    def shares(self, router: Router) -> dict[str, int]:
        routing = self._routing(router)
        if not routing or not routing.get("upstream"):
            return {}
        weight = routing.get("weight", 0) if routing.get("canary") else 0
        shares = {routing["upstream"]: 100 - weight}
        if weight:
            shares[routing["canary"]] = weight
        return shares

    def alive(self, router: Router) -> bool:
        return host.alive(router.handle)

    def refresh(self, router: Router) -> None:
        return None  # no configuration beyond its command line

    def stray(self, known: Router | None) -> list[str]:
        return stray_from_pid_file(self.pid_file, known)

    def stop(self, router: Router) -> None:
        host.terminate(router.handle, grace=10.0)
        self.pid_file.unlink(missing_ok=True)

    def remove_stray(self, handle: str) -> None:
        host.terminate(handle, grace=10.0)

    def adopt(self, handle: str) -> Router | None:
        """A running router whose record was lost: its command line says where it listens."""
        pid = host.pid_of(handle)
        listen, admin = host.option(pid, "--listen"), host.option(pid, "--admin-port")
        if listen is None or admin is None:
            return None
        address, _, port = listen.rpartition(":")
        return Router(kind=self.kind, host=address, port=int(port), handle=handle, admin_port=int(admin))
