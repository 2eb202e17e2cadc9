"""Shadow traffic as the team uses it: a staged candidate answers copies of live requests, real
processes behind a real nginx or the builtin router, and the comparison decides the promote.

Live answers are compared with the answers the same live version gave before anything was staged;
the evidence `release evidence` prints is compared with a recomputation from the paired records.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller import messages
from controller.drivers import host
from support import ROOT, ROUTERS, Release, misbehaving

GOLDEN: set[str] = set()  # the candidates' golden rows: they behave on those (see shadow_models)
with (ROOT / "data" / "sample" / "companies.csv").open() as _fh:
    TEXTS = [row["description"] for row in csv.DictReader(_fh)][:160]
RULES = {  # every copy is compared (rate cap well above what the test sends), and the minimum is small
    "SWITCHYARD_SHADOW_RATE": "10000",
    "SWITCHYARD_SHADOW_MIN_REQUESTS": "100",
}


@pytest.fixture(scope="module")
def shadow_models(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample/1 rules, sample/2 tf-idf, and candidates that pass a stage but on live traffic
    3 fail every request, 4 take 2 s a request, 5 answer one class for everything."""
    root = tmp_path_factory.mktemp("shadow-models")
    GOLDEN.update(misbehaving(registry, root, [{"fail": True}, {"delay": 2.0}, {"label": "Energy"}]))
    return root


@pytest.fixture(params=ROUTERS)
def release(request: pytest.FixtureRequest, shadow_models: Path, tmp_path: Path) -> Iterator[Release]:
    made = Release(shadow_models, tmp_path / "run", request.param)
    yield made
    made("down", check=False)


def send(url: str, texts: list[str], threads: int = 8) -> list[tuple[int, Any]]:
    """Each text once through the router, ``threads`` keep-alive clients at a time: (status, predictions)."""
    clients = [httpx.Client(transport=httpx.HTTPTransport(retries=0), timeout=30.0) for _ in range(threads)]

    def one(index: int) -> tuple[int, Any]:
        try:
            response = clients[index % threads].post(url + "/predict", json={"description": texts[index]})
        except httpx.HTTPError as exc:
            return 0, repr(exc)
        return response.status_code, response.json().get("predictions")

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(len(texts))))
    finally:
        for client in clients:
            client.close()


def evidence(release: Release) -> dict[str, Any]:
    return json.loads(release("evidence", "--json", **RULES).stdout)


def wait_evidence(release: Release, requests: int, key: str = "requests", timeout: float = 60.0) -> dict[str, Any]:
    """Until ``requests`` copies have an outcome (the live instance writes them twice a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = evidence(release)
        if found[key] >= requests or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def records(release: Release) -> list[dict[str, Any]]:
    """The paired records of the staged candidate, read straight from the run dir."""
    files = list((release.run_dir / "shadow").glob("*.jsonl"))
    staged = next(s for s in release.status()["slots"] if s["role"] == "staged")
    mine = [f for f in files if f.stem.startswith(staged["color"])]
    assert len(mine) == 1, files
    assert mine[0].stat().st_mode & 0o077 == 0, "records are owner-only"
    return [json.loads(line) for line in mine[0].read_text().splitlines()]


def recompute(rows: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = [r for r in rows if "dropped" not in r]
    answered = [r for r in pairs if r["error"] is None]
    labels = [(a, b) for r in answered for a, b in zip(r["live"], r["cand"], strict=True)]
    live, cand = Counter(a for a, _ in labels), Counter(b for _, b in labels)
    return {
        "requests": len(pairs),
        "compared": len(answered),
        "errors": sum(1 for r in pairs if r["error"] is not None),
        "agreement": sum(a == b for a, b in labels) / len(labels) if labels else None,
        "shares": {k: (live[k] / len(labels), cand[k] / len(labels)) for k in live | cand},
    }


def assert_evidence_matches_records(found: dict[str, Any], release: Release) -> None:
    offline = recompute(records(release))
    for key in ("requests", "compared", "errors"):
        assert found[key] == offline[key], key
    if offline["agreement"] is None:
        assert found["agreement"] is None
    else:
        assert found["agreement"] == pytest.approx(offline["agreement"])
    shares = {s["label"]: (round(s["live"], 9), round(s["candidate"], 9)) for s in found["shares"]}
    assert shares == {label: (round(a, 9), round(b, 9)) for label, (a, b) in offline["shares"].items()}
    shifts = [abs(s["candidate"] - s["live"]) for s in found["shares"]]
    assert shifts == sorted(shifts, reverse=True), "largest shift first"


def _counted(metrics: str, traffic: str) -> int:
    prefix = f'switchyard_requests_total{{method="POST",route="/predict",status="200",traffic="{traffic}"}} '
    return next((int(float(line[len(prefix) :])) for line in metrics.splitlines() if line.startswith(prefix)), 0)


def test_stage_gathers_evidence_and_the_promote_is_decided_by_it(release: Release) -> None:
    # Given the rules are live and the ML model is staged with shadow traffic (the default)
    release("up", "sample", "1")
    out = release("stage", "2", **RULES)
    assert "gets a copy of 100% of live /predict requests" in out.stdout

    staged = next(s for s in release.status()["slots"] if s["role"] == "staged")
    checks = _counted(httpx.get(staged["url"] + "/metrics").text, "live")  # the stage's own requests

    # When users send requests, the candidate answers copies of them, paired with live's answers
    answers = send(release.url, TEXTS)
    assert {status for status, _ in answers} == {200}
    found = wait_evidence(release, len(TEXTS))
    assert found["requests"] == len(TEXTS) and found["errors"] == 0
    assert_evidence_matches_records(found, release)
    assert found["examples"], "disagreements come with their input"
    example = found["examples"][0]
    assert example["live"] != example["candidate"]
    assert any(text.startswith(example["input"].rstrip("…")) for text in TEXTS), "its input, cut to a readable length"
    assert found["latency"]["candidate_p99_ms"] > 0 and found["latency"]["live_p99_ms"] > 0

    # ... and the candidate's own metrics call them shadow traffic, not users
    metrics = httpx.get(staged["url"] + "/metrics").text
    assert (_counted(metrics, "shadow"), _counted(metrics, "live")) == (len(TEXTS), checks)
    text = release("evidence", **RULES).stdout
    assert "request(s) compared" in text and "class shares, live -> candidate" in text
    assert "shadow:" in release("status").stdout

    # Then a promote whose agreement is surely under the floor is refused, naming the rule and the figures
    agreement, (low, high) = found["agreement"], found["agreement_interval"]
    assert low <= agreement <= high
    assert high < 1, "a candidate that disagrees at least once is surely not in full agreement"
    above = f"{(high + 1) / 2:.6f}"
    refused = release("promote", "--shadow-min-agreement", above, check=False, **RULES)
    assert refused.returncode == 1
    assert f"agreement with live is {agreement:.1%}" in refused.stderr and "below the floor" in refused.stderr
    assert release.serving() == "sample/1"
    last = release.history()[-1]
    assert (last["action"], last["outcome"], last["step"]) == ("promote", "failed", "evidence")

    # ... and one above it goes through
    out = release("promote", "--shadow-min-agreement", f"{low:.4f}", **RULES)
    assert "evidence:" in out.stderr and "request(s) compared" in out.stderr
    assert release.serving() == "sample/2"
    assert not (release.run_dir / "shadow" / "control.json").exists(), "nothing is staged: no copies"


def test_a_failing_slow_or_killed_candidate_never_touches_live_answers(release: Release) -> None:
    release("up", "sample", "1")
    baseline = send(release.url, TEXTS)  # what live answers with nothing staged
    assert {status for status, _ in baseline} == {200}

    # A candidate that fails every live request: live answers stay exactly the same
    release("stage", "3", **RULES)
    assert send(release.url, TEXTS) == baseline
    found = wait_evidence(release, len(TEXTS))
    unseen = len([text for text in TEXTS if text not in GOLDEN])
    assert found["requests"] == len(TEXTS)
    assert found["error_kinds"] == {"HTTP 500": unseen}
    assert_evidence_matches_records(found, release)
    refused = release("promote", check=False, **RULES)
    assert refused.returncode == 1
    assert f"the candidate failed {unseen} of {len(TEXTS)} request(s) (HTTP 500 x{unseen})" in refused.stderr

    # A candidate that takes 2 s a request: live does not wait for it, copies that do not fit are dropped
    release("stage", "4", **RULES)
    assert send(release.url, TEXTS) == baseline
    assert evidence(release)["compared"] < len(TEXTS) / 2, "every live answer came back long before the copies'"
    found = wait_evidence(release, 8, key="compared")
    assert found["compared"] >= 8 and found["latency"]["candidate_p50_ms"] >= 2000
    assert found["requests"] + found["dropped"] <= len(TEXTS)

    # A candidate killed with -9 in the middle of the traffic
    release("stage", "2", **RULES)
    staged = next(s for s in release.status()["slots"] if s["role"] == "staged")
    first = send(release.url, TEXTS[:40])
    os.kill(host.pid_of(staged["handle"]), signal.SIGKILL)
    rest = send(release.url, TEXTS[40:])
    assert first + rest == baseline
    found = wait_evidence(release, len(TEXTS))
    assert found["errors"] >= 1 and all(kind.startswith("unreachable") for kind in found["error_kinds"])
    assert_evidence_matches_records(found, release)

    # status tells the truth, and the next command repairs: nothing leaks
    status = release.status()
    dead = next(s for s in status["slots"] if s["role"] == "staged")
    assert not dead["alive"]
    refused = release("promote", check=False, **RULES)
    assert refused.returncode == 1 and messages.NOT_HEALTHY.found_in(refused.stderr)
    release("down")
    assert release.instances() == 0
    assert not (release.run_dir / "shadow" / "control.json").exists()


def test_a_router_killed_while_shadowing_loses_no_evidence(release: Release) -> None:
    release("up", "sample", "1")
    release("stage", "2", **RULES)
    assert {status for status, _ in send(release.url, TEXTS[:60])} == {200}
    wait_evidence(release, 60)

    # The router dies: status says so, and the evidence gathered so far is still there
    os.kill(host.pid_of(release.status()["router"]["handle"]), signal.SIGKILL)
    status = release.status()
    assert status["phase"] == "Degraded" and status["reason"] == "the router is not running"
    assert "60 request(s) compared" in status["shadow"]

    # The next command repairs it; copies go on from where they were, and the evidence decides the promote
    out = release("up", **RULES)
    assert messages.REPAIR_ROUTER_DOWN.found_in(out.stderr)
    assert release.status()["phase"] == "Staged"
    assert {status for status, _ in send(release.url, TEXTS[60:])} == {200}
    found = wait_evidence(release, len(TEXTS))
    assert found["requests"] == len(TEXTS) and found["errors"] == 0
    assert_evidence_matches_records(found, release)
    assert f"evidence: {len(TEXTS)} request(s) compared" in release("promote", **RULES).stderr
    release("down")
    assert release.instances() == 0 and not (release.run_dir / "shadow" / "control.json").exists()


def test_a_controller_killed_at_the_flip_of_a_shadowed_promote(release: Release) -> None:
    release("up", "sample", "1")
    release("stage", "2", **RULES)
    send(release.url, TEXTS[:100])
    wait_evidence(release, 100)
    proc = release.spawn("promote", pause_at="flip", **RULES)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "paused at flip"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # status tells the truth: a promote in flight, v1 still serving, the evidence still counted
    status = release.status()
    assert status["phase"] == "Progressing" and status["interrupted"]["action"] == "promote"
    assert release.serving() == "sample/1" and "request(s) compared" in status["shadow"]

    # the next command repairs, decides on the same evidence, and the copies stop with the deploy
    out = release("promote", **RULES)
    assert "repair:" in out.stderr and re.search(r"evidence: 10\d request\(s\) compared", out.stderr)
    assert release.serving() == "sample/2"
    assert not (release.run_dir / "shadow" / "control.json").exists()
    assert release.status()["shadow"] is None


def test_no_shadow_says_so_plainly(release: Release) -> None:
    release("up", "sample", "1")
    out = release("stage", "2", "--no-shadow", **RULES)
    assert "no shadow traffic" in out.stdout
    assert "staged without shadow traffic" in release("evidence", **RULES).stdout
    send(release.url, TEXTS[:20])
    assert not list((release.run_dir / "shadow").glob("*.jsonl"))
    out = release("promote", **RULES)
    assert "evidence: none (staged with --no-shadow)" in out.stderr
    assert release.serving() == "sample/2"


def test_bad_shadow_options_are_one_line_errors(release: Release) -> None:
    release("up", "sample", "1")
    bad = release("stage", "2", "--shadow-percent", "150", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --shadow-percent 150.0")
    assert "nothing is staged" in release("evidence").stdout
