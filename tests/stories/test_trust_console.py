"""The trust boundary of the deploy console, tried as an attacker with an account (or none) would,
against a real detached console over a real deployment: no file outside what was signed comes
back, a removed account is out at once, guesses are decided before any hashing, bodies are counted
as they arrive, and neither the Host nor X-Forwarded-For header is believed from just anyone."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from controller.drivers.host import free_port
from support import KEYS, Release, cli

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def console(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Release, str]]:
    """sample v1 live (from a private copy of the registry) and the console detached beside it."""
    root = tmp_path_factory.mktemp("console-trust")
    shutil.copytree(models / "sample" / "1", root / "models" / "sample" / "1")
    release = Release(root / "models", root / "run", "builtin")
    port = free_port()
    try:
        release("up", "sample", "1")
        for name in ("alice", "mallory"):
            added = cli(release, "users", "add", name, "--role", "viewer", stdin=PASSWORD + "\n")
            assert added.returncode == 0, added.stderr
        started = cli(release, "console", "--router", "builtin", "--port", str(port), "--detach")
        assert started.returncode == 0, started.stderr
        yield release, f"http://127.0.0.1:{port}"
    finally:
        release("down", check=False)


def login_form(client: httpx.Client) -> str:
    page = client.get("/login")
    found = re.search(r'name="token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def log_in(url: str, name: str, password: str = PASSWORD, **headers: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=url, timeout=30)
    token = login_form(client)
    answer = client.post("/login", data={"token": token, "user": name, "password": password}, headers=headers)
    return client, answer


def test_the_report_route_serves_only_what_the_signed_manifest_lists(console: tuple[Release, str]) -> None:
    release, url = console
    client, answer = log_in(url, "alice")
    assert answer.status_code == 303
    genuine = client.get("/artifacts/1/confusion_matrix.png")
    assert genuine.status_code == 200 and genuine.content.startswith(b"\x89PNG")

    image = release.models / "sample" / "1" / "confusion_matrix.png"
    saved = image.read_bytes()
    secrets = [KEYS / "signing.key", release.run_dir / "users.json"]
    try:
        for secret in secrets:
            image.unlink()
            image.symlink_to(secret)
            stolen = client.get("/artifacts/1/confusion_matrix.png")
            assert stolen.status_code == 404
            assert b"PRIVATE KEY" not in stolen.content and b"scrypt" not in stolen.content
            assert b"hash" not in stolen.content
        image.unlink()
        image.write_bytes(secrets[0].read_bytes())  # a copy, not a link: its hash is not the signed one
        assert client.get("/artifacts/1/confusion_matrix.png").status_code == 404
    finally:
        image.unlink()
        image.write_bytes(saved)


def test_a_removed_account_is_logged_out_at_once(console: tuple[Release, str]) -> None:
    release, url = console
    client, answer = log_in(url, "mallory")
    assert answer.status_code == 303 and client.get("/history").status_code == 200
    removed = cli(release, "users", "remove", "mallory")
    assert removed.returncode == 0, removed.stderr
    after = client.get("/history", follow_redirects=False)
    assert after.status_code == 303 and after.headers["location"] == "/login"
    assert client.get("/artifacts/1/confusion_matrix.png", follow_redirects=False).status_code == 303


def test_parallel_guesses_are_refused_before_any_hashing(console: tuple[Release, str]) -> None:
    _, url = console
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(20)]
    tokens = [login_form(c) for c in clients]

    def guess(i: int) -> int:
        data = {"token": tokens[i], "user": "alice", "password": f"guess number {i}"}
        return clients[i].post("/login", data=data).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(guess, range(20)))
    checked = statuses.count(401)
    assert checked <= 2, statuses  # one in flight per account and address; the rest never hashed
    assert statuses.count(429) >= 18


def test_a_chunked_body_is_counted_as_it_arrives(console: tuple[Release, str]) -> None:
    _, url = console

    def chunks() -> Iterator[bytes]:
        for _ in range(128):  # 8 MiB with no Content-Length: the server must count
            yield b"user=alice&password=" + b"x" * (64 * 1024 - 20)

    answer = httpx.post(url + "/login", content=chunks(), timeout=60)
    assert answer.status_code == 413


def test_a_foreign_host_header_is_refused(console: tuple[Release, str]) -> None:
    _, url = console
    assert httpx.get(url + "/login", headers={"Host": "attacker.example"}).status_code == 400
    assert httpx.get(url + "/login", headers={"Host": "localhost"}).status_code == 200


def test_x_forwarded_for_from_a_client_is_not_believed(console: tuple[Release, str]) -> None:
    """Each guess claims another address and another account: counted against the real address, the
    guesses still slow down until they are refused."""
    _, url = console
    statuses = []
    for i in range(6):
        _, answer = log_in(url, f"nobody{i}", "wrong password", **{"X-Forwarded-For": f"10.1.2.{i}"})
        statuses.append(answer.status_code)
    assert 429 in statuses, statuses
