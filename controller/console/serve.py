"""``release console``: serve the console, in the foreground or detached until ``release down``.

The console refuses to listen on a non-loopback address while no account exists. Detached, it runs
as its own process (output in ``<run dir>/logs/console.log``, its handle in ``<run dir>/console.pid``)
and ``release down`` stops it with the rest of the deployment.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from typing import Any

import httpx

from controller.drivers import host, loopback
from controller.drivers.users import Accounts
from controller.errors import NeedsOperator, UsageError
from controller.settings import ControllerSettings

READY_SECONDS = 30.0


def _loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def console(settings: ControllerSettings, address: str, port: int, *, detach: bool = False) -> int:
    accounts = Accounts(settings.run_dir).list()
    if not accounts and not _loopback(address):
        raise UsageError(
            f"refusing to serve the console on {address} with no accounts: "
            "add one with `release users add NAME --role deployer`, or listen on 127.0.0.1"
        )
    if detach:
        stop(settings)  # this deployment's console, started earlier: replaced, not doubled
    if not host.port_free(address, port):
        raise UsageError(f"port {port} on {address} is in use; choose another with --port")
    url = f"http://{address}:{port}"
    if detach:
        return _detach(settings, address, port, url)
    import uvicorn

    from controller.console.app import create_app

    print(f"console: {url} ({len(accounts)} account(s); Ctrl-C stops it)", flush=True)
    uvicorn.run(create_app(settings, address), host=address, port=port, **uvicorn_options(settings))
    return 0


def uvicorn_options(settings: ControllerSettings) -> dict[str, Any]:
    """X-Forwarded-* believed only from the configured proxies (uvicorn's default believes loopback,
    which would let any local client choose the address its login attempts count against); timeouts
    and a connection cap so idle or slow clients cannot hold the console."""
    proxies = [p.strip() for p in settings.console_trusted_proxies.split(",") if p.strip()]
    return {
        "log_level": "warning",
        "server_header": False,
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
        "timeout_keep_alive": 5,
        "limit_concurrency": 256,
        "h11_max_incomplete_event_size": 16 * 1024,
    }


def _detach(settings: ControllerSettings, address: str, port: int, url: str) -> int:
    log = settings.run_dir / "logs" / "console.log"
    # The console process runs from the project root: every path it is given must be absolute.
    absolute = settings.model_copy(
        update={"run_dir": settings.run_dir.resolve(), "models_dir": settings.models_dir.resolve()}
    )
    argv = [sys.executable, "-m", "controller.console.serve", absolute.model_dump_json(), address, str(port)]
    handle = host.spawn(argv, log=log, env=host.child_env(), cwd=host.PROJECT_ROOT)
    (settings.run_dir / "console.pid").write_text(handle)
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if not host.alive(handle):
            raise NeedsOperator(f"the console exited while starting; its log says:\n{host.tail(log)}")
        try:
            if loopback.client().get(url + "/login", timeout=0.5).status_code == 200:
                print(f"console: {url} (detached; `release down` stops it)")
                return 0
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise NeedsOperator(f"the console did not answer at {url} within {READY_SECONDS:.0f}s")


def stop(settings: ControllerSettings) -> bool:
    """Stop a detached console of this deployment; True if one ran."""
    pid_file = settings.run_dir / "console.pid"
    try:
        handle = pid_file.read_text().strip()
    except FileNotFoundError:
        return False
    running = host.alive(handle)
    host.terminate(handle, grace=10.0)
    pid_file.unlink(missing_ok=True)
    return running


if __name__ == "__main__":  # the detached console: settings as JSON, address, port
    import uvicorn

    from controller.console.app import create_app

    serve_settings = ControllerSettings.model_validate_json(sys.argv[1])
    uvicorn.run(
        create_app(serve_settings, sys.argv[2]),
        host=sys.argv[2],
        port=int(sys.argv[3]),
        **uvicorn_options(serve_settings),
    )
