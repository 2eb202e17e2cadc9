"""The console's login throttle as a pure object: waits that double, one attempt in flight per key, bounded memory."""

from __future__ import annotations

from pathlib import Path


def test_repeated_wrong_passwords_wait_longer_each_time() -> None:
    from controller.console.auth import MAX_DELAY, Throttle

    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    keys = ("user:alice", "client:127.0.0.1")
    waits = []
    for _ in range(8):
        assert throttle.admit(*keys) == 0
        assert throttle.admit(*keys) > 0  # a second attempt while the first is being checked
        throttle.failed(*keys)
        waits.append(throttle.admit(*keys))
        now[0] += waits[-1]
    assert waits[0] == 0.25 and waits == sorted(waits) and waits[3] == 2 * waits[2] and waits[-1] == MAX_DELAY
    throttle.admit(*keys)
    throttle.failed(*keys)
    assert throttle.admit("user:bob", "client:127.0.0.1") == MAX_DELAY  # the address is slowed too
    throttle.succeeded(*keys)
    assert throttle.admit(*keys) == 0


def test_the_throttle_forgets_the_least_recent_keys_beyond_its_bound() -> None:
    from controller.console.auth import Throttle

    throttle = Throttle(clock=lambda: 0.0, max_keys=100)
    throttle.admit("user:alice")
    throttle.failed("user:alice")
    for i in range(1_000):
        throttle.admit(f"client:10.0.{i // 256}.{i % 256}")
        throttle.admit("user:alice")  # still being guessed: stays among the most recent
    assert len(throttle._keys) == 100
    assert throttle.admit("user:alice") > 0


def test_over_tls_the_cookies_are_host_prefixed_and_secure(tmp_path: Path) -> None:
    """Behind a TLS-terminating proxy the console is reached over https: its cookies then carry the
    __Host- prefix and Secure, so a sibling subdomain can neither plant nor overwrite them."""
    import asyncio

    import httpx

    from controller.console.app import create_app
    from controller.drivers.users import Accounts
    from controller.settings import ControllerSettings

    Accounts(tmp_path).add("alice", "viewer", "correct horse battery")
    app = create_app(ControllerSettings(run_dir=tmp_path, console_hosts="console.example"))

    def client(base_url: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)

    async def scenario() -> None:
        async with client("https://console.example") as tls:
            page = await tls.get("/login")
            set_cookie = page.headers["set-cookie"]
            assert set_cookie.startswith("__Host-switchyard_login=") and "secure" in set_cookie.lower()
            token = set_cookie.split("=", 1)[1].split(";", 1)[0]
            form = {"token": token, "user": "alice", "password": "correct horse battery"}
            answer = await tls.post("/login", data=form)
            assert answer.status_code == 303
            cookies = answer.headers.get_list("set-cookie")
            assert any(c.startswith("__Host-switchyard_session=") and "secure" in c.lower() for c in cookies)
        async with client("http://console.example") as plain:
            assert (await plain.get("/login")).headers["set-cookie"].startswith("switchyard_login=")
        async with client("https://elsewhere.example") as foreign:
            assert (await foreign.get("/login")).status_code == 400

    asyncio.run(scenario())
