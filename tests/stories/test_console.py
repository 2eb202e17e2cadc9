"""The deploy console as the person who owns the decision uses it: a real headless Chromium, a real
deployment (service processes, the builtin router, the SQLite state), accounts made with the CLI, and
webhooks received by a local server."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import Page, chrome, webhook

from controller.drivers.host import free_port
from support import ROOT, Release, cli

PASSWORDS = {"alice": "correct horse battery", "victor": "viewer only please"}
SHOTS = Path(os.environ["SCREENSHOTS_DIR"]) if os.environ.get("SCREENSHOTS_DIR") else None
with (ROOT / "data" / "sample" / "companies.csv").open() as _fh:
    TEXTS = [row["description"] for row in csv.DictReader(_fh)][::22][:30]  # every class, in turn


def add_user(release: Release, name: str, role: str) -> None:
    # from standard input: a password is never a command-line argument
    result = cli(release, "users", "add", name, "--role", role, stdin=PASSWORDS[name] + "\n")
    assert result.returncode == 0, result.stderr


@contextmanager
def console_over(models: Path, tmp_path: Path, **settings: str) -> Iterator[tuple[Release, str, list[dict[str, Any]]]]:
    """sample v1 live, v2 staged (with shadow traffic), two accounts, and the console detached beside
    the router; ``settings`` (``SWITCHYARD_*``) hold for the CLI and the console alike."""
    with webhook() as (hook, received):
        release = Release(models, tmp_path / "run", "builtin")
        port = free_port()
        env = {"SWITCHYARD_NOTIFY": hook, "SWITCHYARD_CONSOLE_URL": f"http://127.0.0.1:{port}", **settings}
        try:
            release("up", "sample", "1", **env)
            release("stage", "2", **env)
            add_user(release, "alice", "deployer")
            add_user(release, "victor", "viewer")
            started = cli(release, "console", "--router", "builtin", "--port", str(port), "--detach", **env)
            assert started.returncode == 0 and "detached" in started.stdout, started.stderr
            yield release, f"http://127.0.0.1:{port}", received
        finally:
            release("down", check=False)


@pytest.fixture
def deployment(models: Path, tmp_path: Path) -> Iterator[tuple[Release, str, list[dict[str, Any]]]]:
    with console_over(models, tmp_path) as found:
        yield found


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = chrome()
    yield driver
    driver.quit()


def test_a_deployer_deploys_and_rolls_back_from_the_console(
    deployment: tuple[Release, str, list[dict[str, Any]]], browser: Any
) -> None:
    release, console, received = deployment
    page = Page(browser, console, SHOTS)

    # A wrong password is refused
    assert "wrong name or password" in page.log_in("alice", "not the password")
    page.shot("login")

    # Alice logs in and sees what runs and what waits
    overview = page.log_in("alice", PASSWORDS["alice"])
    assert "Staged: green (sample v2) is staged; blue (sample v1) is live" in overview
    assert "rules: rules" in overview and "ML: tfidf-linear" in overview
    page.shot("overview")

    # The comparison: offline metrics, per-class changes, both confusion matrices, the gate's verdict
    page.open("/compare")
    compare = page.text()
    assert "sample v2 staged vs v1 live" in compare and "The gate passes" in compare
    assert "macro_f1" in compare and "Per class" in compare and page.images_loaded()
    page.shot("compare", full=True)

    # Deploy, confirmed in plain words; the router serves v2 and the history names her
    page.link("Deploy v2")
    assert "Users will get sample v2 instead of v1" in page.text()
    page.shot("confirm")
    page.click("#confirm")
    assert "sample v2 (green) is live" in page.wait_for("is live")
    assert release.serving() == "sample/2"
    page.open("/history")
    assert "alice (console) promote ok v1 → v2" in page.text()
    page.shot("history", full=True)

    # Roll back, the same way
    page.open("/")
    page.link("Roll back")
    assert "Users will get sample v1 instead of v2" in page.text()
    page.click("#confirm")
    page.wait_for("is live")
    assert release.serving() == "sample/1"
    history = release.history()
    assert [(h["action"], h["actor"]) for h in history[-2:]] == [
        ("promote", "alice (console)"),
        ("rollback", "alice (console)"),
    ]

    # Webhooks: staged (from the CLI), deployed and rolled back (from the console, with who did it)
    events = [(e["event"], e["version"], e["actor"].split(" ")[0]) for e in received]
    assert events[0][:2] == ("staged", 2)
    assert events[1:] == [("deployed", 2, "alice"), ("rolled_back", 1, "alice")]
    assert all(e["link"].startswith(console) for e in received)


def test_a_refused_deploy_shows_why_and_changes_nothing(
    deployment: tuple[Release, str, list[dict[str, Any]]], browser: Any
) -> None:
    release, console, received = deployment
    release("promote")  # v2 live, v1 the rollback target
    release("stage", "1", "--force")  # the rules model, worse than v2, staged past the gate
    page = Page(browser, console, SHOTS)
    page.log_in("alice", PASSWORDS["alice"])
    page.open("/compare")
    assert "The gate refuses" in page.text() and "worse than live" in page.text()
    page.link("Deploy v1")
    assert "The deploy will be refused" in page.text()
    page.click("#confirm")
    refused = page.wait_for("refused")
    assert "gate failed:" in refused and "worse than live" in refused and "Live traffic was not touched" in refused
    assert release.serving() == "sample/2"
    assert received[-1]["event"] == "gate_refused" and received[-1]["actor"] == "alice (console)"


def _send(release: Release, texts: list[str]) -> None:
    with httpx.Client(timeout=10) as client:
        for text in texts:
            assert client.post(release.url + "/predict", json={"description": text}).status_code == 200


def _compared(release: Release, count: int) -> dict[str, Any]:
    """The CLI's evidence, once the candidate has answered ``count`` copies (they go after the answer)."""
    deadline = time.monotonic() + 60
    while (found := json.loads(release("evidence", "--json").stdout))["compared"] < count:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    return found


def test_the_deploy_decision_shows_what_the_candidate_did_with_live_traffic(
    models: Path, tmp_path: Path, browser: Any
) -> None:
    with console_over(models, tmp_path, SWITCHYARD_SHADOW_MIN_REQUESTS="20") as (release, console, _):
        page = Page(browser, console, SHOTS)
        page.log_in("alice", PASSWORDS["alice"])
        page.open("/compare")
        assert "No request compared yet" in page.text()

        # Ten requests of live traffic: too few for the rule, and the deploy says so before and after the click
        _send(release, TEXTS[:10])
        _compared(release, 10)
        page.open("/compare")
        assert "The evidence refuses: 10 request(s) compared, the minimum is 20" in page.text()
        page.link("Deploy v2")
        assert "The shadow evidence refuses v2" in page.text() and "The deploy will be refused" in page.text()
        page.click("#confirm")
        refused = page.wait_for("refused")
        assert "evidence failed:" in refused and "the minimum is 20" in refused
        assert release.serving() == "sample/1"

        # Twenty more (and the one above): the page shows what `release evidence` shows, and the deploy goes
        _send(release, TEXTS[10:30])
        found = _compared(release, 31)
        page.open("/compare")
        text = page.text()
        assert "The evidence passes" in text and "31 request(s) over" in text
        assert f"{found['agreement'] * 100:.1f}% of {found['rows']} prediction(s) the same as live" in text
        top = found["shares"][0]
        assert f"{top['label']} {top['live'] * 100:.1f}% {top['candidate'] * 100:.1f}%" in text
        for example in found["examples"][:5]:
            assert example["input"][:60] in text
        page.shot("evidence", full=True)
        page.link("Deploy v2")
        assert "refuses" not in page.text()
        page.click("#confirm")
        assert "sample v2 (green) is live" in page.wait_for("is live")
        assert release.serving() == "sample/2"
        assert "evidence: 31 request(s) compared" in release.history()[-1]["reason"]


def test_a_deployer_follows_a_canary_and_aborts_it_from_the_console(
    deployment: tuple[Release, str, list[dict[str, Any]]], browser: Any
) -> None:
    release, console, received = deployment
    release("promote", "--canary", "50,100", "--step-seconds", "600")
    page = Page(browser, console, SHOTS)
    overview = page.log_in("alice", PASSWORDS["alice"])
    assert "Canary: v2 takes 50% of live traffic" in overview and "Step 1 of 2 (50% → 100%)" in overview
    assert "the router sends it 50% of new requests" in overview
    assert "sending 50% of new requests to green, the rest to blue" in overview
    assert "Deploy the staged version" not in overview  # the canary decides that, or an abort
    page.shot("canary")
    page.link("Abort")
    assert "Every user goes back to sample v1 at once" in page.text()
    page.click("#confirm")
    page.wait_for("Staged")
    assert "Canary:" not in page.text()
    assert {release.serving() for _ in range(20)} == {"sample/1"}
    last = release.history()[-1]
    assert (last["action"], last["actor"]) == ("abort", "alice (console)")
    assert (received[-1]["event"], received[-1]["version"], received[-1]["actor"]) == ("aborted", 2, "alice (console)")

    # Nothing left to abort: a stale confirmation page changes nothing
    page.open("/confirm/abort")
    assert "Nothing to abort" in page.text()


def test_viewers_see_everything_and_change_nothing(
    deployment: tuple[Release, str, list[dict[str, Any]]], browser: Any
) -> None:
    release, console, _ = deployment
    page = Page(browser, console, None)
    assert "Staged" in page.log_in("victor", PASSWORDS["victor"])
    assert page.buttons() == ["Log out"] or page.buttons() == []
    page.open("/compare")
    assert "The gate passes" in page.text() and not [b for b in page.buttons() if "Deploy" in b]

    # A forged POST with the viewer's own session and CSRF token is refused
    cookies = {"switchyard_session": page.cookie("switchyard_session")}
    forged = httpx.post(console + "/actions/promote", data={"csrf": page.csrf(), "version": "2"}, cookies=cookies)
    assert forged.status_code == 403
    assert httpx.get(console + "/confirm/promote", cookies=cookies).status_code == 403
    assert release.serving() == "sample/1"


def test_a_post_without_the_sessions_csrf_token_is_refused(
    deployment: tuple[Release, str, list[dict[str, Any]]], browser: Any
) -> None:
    release, console, _ = deployment
    page = Page(browser, console, None)
    page.log_in("alice", PASSWORDS["alice"])
    cookies = {"switchyard_session": page.cookie("switchyard_session")}
    for data in ({"version": "2"}, {"version": "2", "csrf": "guessed"}):
        assert httpx.post(console + "/actions/promote", data=data, cookies=cookies).status_code == 403
    assert httpx.post(console + "/actions/promote", data={"version": "2"}).status_code == 403  # no session
    assert httpx.get(console + "/", follow_redirects=False).headers["location"] == "/login"
    too_big = httpx.post(console + "/login", content=b"x" * 100_000)
    assert too_big.status_code == 413
    assert release.serving() == "sample/1"


def test_a_hung_instance_does_not_hold_a_page_up(
    deployment: tuple[Release, str, list[dict[str, Any]]], browser: Any
) -> None:
    release, console, _ = deployment
    staged = next(s for s in release.status()["slots"] if s["role"] == "staged")
    pid = int(staged["handle"].split(":")[0])
    os.kill(pid, signal.SIGSTOP)  # it accepts connections and never answers
    try:
        page = Page(browser, console, None)
        page.log_in("alice", PASSWORDS["alice"])
        text = page.text()
        assert "Degraded" in text and "staged slot green (sample v2) is not ready" in text
    finally:
        os.kill(pid, signal.SIGCONT)


def test_up_can_start_the_console_and_down_stops_it(models: Path, tmp_path: Path) -> None:
    release = Release(models, tmp_path / "run", "builtin")
    port = free_port()
    try:
        started = release("up", "sample", "1", "--console", str(port))
        assert f"console: http://127.0.0.1:{port}" in started.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/login").status_code == 200
    finally:
        stopped = release("down", check=False)
    assert "stopped the console" in stopped.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)


def test_the_console_refuses_a_public_address_without_accounts(models: Path, tmp_path: Path) -> None:
    release = Release(models, tmp_path / "run", "builtin")
    result = cli(release, "console", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "refusing to serve the console on 0.0.0.0 with no accounts" in result.stderr
