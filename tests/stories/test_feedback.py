"""The CD4ML loop as the SaaS product uses it, on real processes behind each router: every answer is
logged under its request id, the true labels come back later (by HTTP on the stable address and by
CSV), and `release quality` reports each version's live accuracy, and the staged candidate against
live on the same requests, equal to a recomputation from the test's own labels."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.drivers import host
from support import ROOT, ROUTERS, Release, cli, free_port

with (ROOT / "data" / "sample" / "companies.csv").open() as _fh:
    ALL_ROWS = [(row["description"], row["sector"]) for row in csv.DictReader(_fh)]
ROWS = ALL_ROWS[:120]
FAST_SHADOW = {"SWITCHYARD_SHADOW_RATE": "10000"}


@pytest.fixture(params=ROUTERS)
def release(request: pytest.FixtureRequest, registry: Path, tmp_path: Path) -> Iterator[Release]:
    shutil.copytree(registry, tmp_path / "models")  # a retrain adds a version: not to the shared registry
    made = Release(tmp_path / "models", tmp_path / "run", request.param)
    yield made
    made("down", check=False)


def logged(release: Release, query: str = "SELECT count(*) FROM predictions") -> Any:
    with sqlite3.connect(release.run_dir / "predictions.sqlite") as conn:
        return conn.execute(query).fetchall()


def wait_logged(release: Release, rows: int, query: str = "SELECT count(*) FROM predictions") -> int:
    """Until the instances' writers have committed ``rows`` answers (they do twice a second)."""
    deadline = time.monotonic() + 60
    while True:
        count = logged(release, query)[0][0] if (release.run_dir / "predictions.sqlite").exists() else 0
        if count >= rows or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.2)


def predict(client: httpx.Client, url: str, texts: list[str], ids: list[str]) -> dict[str, str]:
    """Each text under its request id: id -> the predicted label (and the id echoed back, checked)."""
    answers = {}
    for text, rid in zip(texts, ids, strict=True):
        response = client.post(url + "/predict", json={"description": text}, headers={"X-Request-ID": rid})
        assert response.status_code == 200 and response.headers["x-request-id"] == rid
        answers[rid] = response.json()["predictions"][0]["label"]
    return answers


def quality(release: Release) -> dict[str, Any]:
    return json.loads(release("quality", "--json").stdout)


@pytest.mark.parametrize("release", ROUTERS, indirect=True)
def test_answers_are_logged_labels_come_back_and_live_accuracy_is_what_they_say(
    release: Release, tmp_path: Path
) -> None:
    release("up", "sample", "1")
    texts, truth = [t for t, _ in ROWS[:80]], [s for _, s in ROWS[:80]]
    ids = [f"order-{i}" for i in range(80)]
    with httpx.Client(timeout=30.0) as client:
        answers = predict(client, release.url, texts, ids)
        anonymous = client.post(release.url + "/predict", json={"description": texts[0]})
        assert anonymous.headers["x-request-id"], "the service makes an id when the client sends none"
        several = client.post(
            release.url + "/predict",
            json={"instances": [{"description": t} for t in texts[:3]]},
            headers={"X-Request-ID": "batch-1"},
        )
        assert several.status_code == 200
    assert wait_logged(release, 84) == 84
    assert logged(release, "SELECT request_id FROM predictions WHERE request_id LIKE 'batch-1/%' ORDER BY 1") == [
        ("batch-1/0",),
        ("batch-1/1",),
        ("batch-1/2",),
    ]
    assert logged(release, "SELECT DISTINCT version, slot, shadow FROM predictions") == [(1, "blue", 0)]
    assert (release.run_dir / "predictions.sqlite").stat().st_mode & 0o077 == 0, "the log is owner-only"

    # Labels by HTTP on the stable address: a token is needed, a bad batch stores nothing
    token = release("feedback", "token").stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    first = [{"request_id": rid, "label": label} for rid, label in zip(ids[:40], truth[:40], strict=True)]
    with httpx.Client(timeout=30.0) as client:
        assert client.post(release.url + "/feedback", json=first).status_code == 401
        wrong = client.post(release.url + "/feedback", json=first, headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401
        unknown = client.post(
            release.url + "/feedback", json=[*first, {"request_id": "nobody", "label": "Energy"}], headers=auth
        )
        assert unknown.status_code == 422 and "nobody" in unknown.json()["error"]["message"]
        assert logged(release, "SELECT count(*) FROM feedback") == [(0,)], "nothing half-imported"
        stored = client.post(release.url + "/feedback", json=first, headers=auth)
        assert stored.status_code == 200 and stored.json() == {"stored": 40, "replaced": 0, "late": 0}
        too_big = client.post(release.url + "/feedback", content=b"[" + b" " * 3_000_000 + b"]", headers=auth)
        assert too_big.status_code == 413

    # The rest by CSV, with one correction of an earlier label: it replaces it and counts once
    sheet = tmp_path / "labels.csv"
    rows = list(zip(ids[40:], truth[40:], strict=True))
    corrected = "Energy" if truth[0] != "Energy" else "Utilities"
    with sheet.open("w", newline="") as fh:
        csv.writer(fh).writerows([("request_id", "label"), *rows, (ids[0], corrected)])
    out = release("feedback", "import", str(sheet))
    assert "stored 41 label(s)" in out.stdout and "1 replaced" in out.stdout
    truth[0] = corrected
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\norder-1,Energy\n,Energy\n")
    refused = release("feedback", "import", str(bad), check=False)
    assert refused.returncode == 2 and "line 3" in refused.stderr and "nothing was imported" in refused.stderr

    found = quality(release)
    [live] = found["versions"]
    assert found["drift"]["version"] == 1 and found["drift"]["answered"] == 84  # live answers, checks left out
    expected = sum(answers[rid] == label for rid, label in zip(ids, truth, strict=True))
    assert (live["version"], live["slot"], live["labelled"], live["correct"]) == (1, "blue", 80, expected)
    lo, hi = live["interval"]
    assert lo <= expected / 80 <= hi
    assert release.status()["quality"]["versions"][0]["correct"] == expected
    assert f"quality: v1 (blue): accuracy {expected / 80:.3f}" in release("status").stdout
    # ... and on the console's overview, for the person who decides
    assert cli(release, "users", "add", "bo", "--role", "viewer", stdin="a long enough password\n").returncode == 0
    console = free_port()
    release("up", "sample", "1", "--console", str(console))
    with httpx.Client(base_url=f"http://127.0.0.1:{console}", timeout=30) as browser:
        token = re.search(r'name="token" value="([^"]+)"', browser.get("/login").text)
        assert token is not None
        browser.post("/login", data={"token": token.group(1), "user": "bo", "password": "a long enough password"})
        page = browser.get("/").text
    assert "own requests</h2>" in page and f"accuracy {expected / 80:.3f}" in page


@pytest.mark.parametrize("release", ["builtin"], indirect=True)
def test_a_staged_candidate_is_compared_with_live_and_a_retrain_learns_from_the_labels(release: Release) -> None:
    release("up", "sample", "1")
    release("stage", "2", **FAST_SHADOW)
    texts, truth = [t for t, _ in ROWS[:60]], [s for _, s in ROWS[:60]]
    ids = [f"lead-{i}" for i in range(60)]
    with httpx.Client(timeout=30.0) as client:
        live_answers = predict(client, release.url, texts, ids)
    # every copy is answered by the candidate under the same id (rate cap far above this traffic)
    assert wait_logged(release, 60, "SELECT count(*) FROM predictions WHERE shadow = 1") == 60
    shadow = dict(logged(release, "SELECT request_id, label FROM predictions WHERE shadow = 1"))
    # The CD4ML rule on live labels, before any label is back: nothing shows the candidate better
    gated = {"SWITCHYARD_QUALITY_GATE": "better", "SWITCHYARD_SHADOW_MAX_P99_RATIO": "1000"}  # labels decide here
    refused = release("promote", check=False, **gated)
    assert refused.returncode == 1 and "no labelled request was answered by both yet" in refused.stderr
    assert release.serving() == "sample/1"
    token = release("feedback", "token").stdout.strip()
    labels = [{"request_id": rid, "label": label} for rid, label in zip(ids, truth, strict=True)]
    with httpx.Client(timeout=30.0) as client:
        response = client.post(release.url + "/feedback", json=labels, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
    found = quality(release)
    by_version = {(v["version"], v["shadow"]): v for v in found["versions"]}
    assert by_version[(2, True)]["slot"] == "green" and by_version[(2, True)]["labelled"] == 60
    challenger_only = sum(shadow[r] == t != live_answers[r] for r, t in zip(ids, truth, strict=True))
    champion_only = sum(live_answers[r] == t != shadow[r] for r, t in zip(ids, truth, strict=True))
    paired = found["paired"]
    assert (paired["candidate"], paired["live"], paired["pairs"]) == (2, 1, 60)
    assert paired["difference"] == pytest.approx((challenger_only - champion_only) / 60)
    out = release("quality").stdout
    assert "paired: v2 against live v1" in out and "v2 (green, shadow)" in out

    # With the labels back, the same rule decides as the interval `quality` printed says
    refused = release("promote", check=False, **gated)
    shown_better = paired["interval"][0] > 0
    if shown_better:
        assert refused.returncode == 0 and "live labels:" in refused.stdout + refused.stderr
        release("rollback")
    else:
        assert refused.returncode == 1 and "live labels do not show the candidate" in refused.stderr
    assert release.serving() == "sample/1"

    # Retrain on the data plus these labels: a new signed version that names its feedback, staged as any
    retrained = release("retrain", "--config", str(ROOT / "pipeline" / "configs" / "sample.toml"))
    assert "sample v3 is trained on the labelled live predictions" in retrained.stdout
    manifest = json.loads((release.models / "sample" / "3" / "manifest.json").read_text())
    assert manifest["feedback"]["rows"] == 60 and manifest["dataset"]["rows"] == manifest["feedback"]["rows"] + len(
        ALL_ROWS
    )
    staged = release("stage", "3", **FAST_SHADOW)
    assert "v3 is staged in green" in staged.stdout
    ids = [f"again-{i}" for i in range(60)]
    with httpx.Client(timeout=30.0) as client:
        predict(client, release.url, texts, ids)
    assert wait_logged(release, 60, "SELECT count(*) FROM predictions WHERE shadow = 1 AND version = 3") == 60
    labels = [{"request_id": rid, "label": label} for rid, label in zip(ids, truth, strict=True)]
    with httpx.Client(timeout=30.0) as client:
        response = client.post(release.url + "/feedback", json=labels, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
    assert quality(release)["paired"]["candidate"] == 3


@pytest.mark.parametrize("release", ["builtin"], indirect=True)
def test_a_live_instance_killed_under_load_loses_at_most_its_last_second_of_log(release: Release) -> None:
    release("up", "sample", "1")
    live = next(s for s in release.status()["slots"] if s["role"] == "live")
    answered: list[tuple[str, float]] = []
    stop = threading.Event()

    def send(worker: int) -> None:
        with httpx.Client(timeout=10.0) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                rid = f"w{worker}-{i}"
                try:
                    response = client.post(
                        release.url + "/predict",
                        json={"description": ROWS[i % len(ROWS)][0]},
                        headers={"X-Request-ID": rid},
                    )
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    answered.append((rid, time.time()))

    senders = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (answered and time.time() - answered[0][1] > 3):
        time.sleep(0.05)  # three seconds of load first, then the kill
    killed = time.time()
    os.kill(host.pid_of(live["handle"]), signal.SIGKILL)
    time.sleep(0.5)
    stop.set()
    for sender in senders:
        sender.join(timeout=30)
    with sqlite3.connect(release.run_dir / "predictions.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        kept = {rid for (rid,) in conn.execute("SELECT request_id FROM predictions")}
    older = [rid for rid, at in answered if at < killed - 1.0]
    assert older and not [rid for rid in older if rid not in kept], "an answer older than a second was lost"
    # the next command restarts the instance, and the log goes on in the same file
    release("heal")
    with httpx.Client(timeout=10.0) as client:
        predict(client, release.url, [ROWS[0][0]], ["after-the-kill"])
    assert wait_logged(release, 1, "SELECT count(*) FROM predictions WHERE request_id = 'after-the-kill'") == 1
