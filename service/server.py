"""Running the app: sockets, workers, logging and exit codes.

Exit codes: 0 clean shutdown (SIGTERM drains in-flight requests first); 2 bad settings; 3 the artifact
cannot be served (bad hash, wrong runtime, unpicklable, failed warm-up).

With ``workers > 1`` each worker binds the TCP port itself with SO_REUSEPORT, so the kernel spreads
connections across workers (a shared accept socket lets one busy process take every keep-alive
connection). The unix socket, if any, is bound once here and shared. Each worker loads and warms up
its model before any of them binds, so the port opens only when every worker is ready.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from artifact.trust import Verified
from service.settings import ServiceSettings

EXIT_ARTIFACT = 3


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "switchyard.access":
            return record.getMessage()
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # we log one richer line per request ourselves


def bind_tcp(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bind_uds(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
        path.unlink()  # a stale socket from an earlier run; a live one would have its own path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)  # the router (nginx, maybe another user or container) must connect
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def pin(cpu: int) -> None:
    """Run every thread of this process, and those it starts later, on ``cpu``.

    The event loop and the model thread hand each request over twice; on one core that hand-off is a
    local wake-up with warm caches instead of a cross-core one (measured here: 0.04-0.07 ms less per
    request at concurrency 1, 10-45% more requests/s at concurrency 32). With the GIL a worker uses
    about one core anyway."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:  # a thread that has just ended
            continue


def run_worker(
    settings: ServiceSettings,
    verified: Verified,
    sockets: list[socket.socket] | None,
    *,
    index: int = 0,
    before_bind: Callable[[], list[socket.socket]] | None = None,
) -> int:
    """Serve until SIGTERM. With ``before_bind``, the model is loaded first and the sockets come after."""
    configure_logging(settings.log_level)
    cpu = settings.worker_cpu(index)
    if cpu is not None:
        pin(cpu)
        logging.getLogger("switchyard.service").info(f"worker {index} runs on CPU {cpu}")

    from service.app import ServerHooks, create_app
    from service.runtime import ModelRuntime

    runtime = ModelRuntime(settings, verified)
    if before_bind is not None:
        if not runtime.load():
            return EXIT_ARTIFACT
        sockets = before_bind()

    def router_side() -> list[Any]:  # connections accepted on the unix socket (a str sockname)
        return [c for c in server.server_state.connections if isinstance(_sockname(c), str)]

    def close_router_connections(passes: int = 250) -> None:
        """After a flip: the router's connections close, idle ones at once, busy ones after their response
        (uvicorn's own shutdown). A connection that has not served a request yet is left until it has
        one: the router opened it just before the flip and its request may be on the way; closed
        before it is read, that request fails, and nginx does not retry a fresh connection that fails
        (only a pooled one). Such connections are looked at again every 20 ms, for 5 s at most."""
        waiting = False
        for connection in router_side():
            fresh = getattr(connection, "cycle", None) is None
            if fresh and getattr(connection, "timeout_keep_alive_task", None) is None:
                waiting = True
            else:
                connection.shutdown()
        if waiting and passes > 0:
            asyncio.get_running_loop().call_later(0.02, close_router_connections, passes - 1)

    hooks = ServerHooks(
        close_router_connections=close_router_connections,
        router_connections=lambda: len(router_side()),
        stop=lambda: setattr(server, "should_exit", True),
    )
    config = uvicorn.Config(
        lambda: create_app(settings, runtime, hooks),  # built by the server, with the server's callbacks
        factory=True,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_timeout,
        timeout_graceful_shutdown=int(settings.graceful_timeout) or None,
        server_header=False,
        proxy_headers=False,  # nothing here reads the client address; one middleware less per request
    )
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM/SIGINT, then restores the previous handler and re-raises the signal;
    # a no-op previous handler turns a completed graceful shutdown into exit code 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    server.run(sockets=sockets)
    if runtime.failure:
        return EXIT_ARTIFACT
    return 0


def _sockname(connection: Any) -> Any:
    transport = getattr(connection, "transport", None)
    return transport.get_extra_info("sockname") if transport is not None else None


def _child(settings_json: str, verified: Verified, index: int, uds: socket.socket | None, all_ready: Any) -> None:
    settings = ServiceSettings.model_validate_json(settings_json)

    def bind_when_all_are_ready() -> list[socket.socket]:
        # No worker takes connections before every worker has loaded and warmed up its model, so a
        # ready answer from one worker never hides a sibling that would answer 503.
        all_ready.wait(timeout=600)
        return [bind_tcp(settings.host, settings.port, reuse_port=True), *([uds] if uds else [])]

    sys.exit(run_worker(settings, verified, None, index=index, before_bind=bind_when_all_are_ready))


def serve(settings: ServiceSettings, verified: Verified) -> int:
    """Serve the artifact that the caller verified (its bytes, checked once: every worker loads them)."""
    uds = bind_uds(settings.uds) if settings.uds else None
    try:
        if settings.workers == 1:
            sockets = [bind_tcp(settings.host, settings.port, reuse_port=False)]
            if uds is not None:
                sockets.append(uds)
            return run_worker(settings, verified, sockets)
        return _supervise(settings, verified, uds)
    finally:
        if settings.uds and uds is not None:
            uds.close()
            settings.uds.unlink(missing_ok=True)


def _supervise(settings: ServiceSettings, verified: Verified, uds: socket.socket | None) -> int:
    configure_logging(settings.log_level)
    log = logging.getLogger("switchyard.service")
    ctx = multiprocessing.get_context("spawn")
    payload = settings.model_dump_json()
    all_ready = ctx.Barrier(settings.workers)
    children = [
        ctx.Process(target=_child, args=(payload, verified, index, uds, all_ready), name=f"worker-{index}")
        for index in range(settings.workers)
    ]
    for child in children:
        child.start()
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.pid and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGUSR1, forward)
    log.info(f"started {settings.workers} workers on {settings.host}:{settings.port}")
    code = 0
    while any(child.is_alive() for child in children):
        for child in children:
            child.join(timeout=0.2)
            if not child.is_alive() and child.exitcode and not stopping:
                log.error(f"{child.name} exited with code {child.exitcode}; stopping the others")
                code = child.exitcode if child.exitcode > 0 else 1
                all_ready.abort()  # siblings waiting to bind give up instead of waiting out the timeout
                stop(signal.SIGTERM, None)
    return code
