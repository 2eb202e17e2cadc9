"""Automatic rollback benchmark: how long users meet a bad model before the agent takes it away.

    python -m bench.rollback [--concurrency 32] [--router nginx] [--runs 2]

The sample models in a scratch registry: v1 (TF-IDF) live, v2 the same model wrapped to fail one
request in five on live traffic (tests/testmodels.py; it passes every check of a stage). Load: keep-
alive clients at the given concurrency sending real descriptions through the router. Two ways in,
with the default analysis settings: a plain promote under the watch, and a canary's first step (5%).
For each: the time from the first failed answer to the last request the bad version answered (its
exposure: the agent's detection, its rollback command and the flip), and the failed requests.
Goal from the issue: at most 2 s from the first bad answer to the rollback flip, at concurrency 32.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.serve import ROOT, log, train
from controller.drivers.host import free_port

sys.path.insert(0, str(ROOT / "tests"))  # the faulty model class and the test signing key live there


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--router", default="nginx" if shutil.which("nginx") else "builtin")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    import support  # type: ignore[import-not-found]
    import testmodels  # type: ignore[import-not-found]
    from artifact.trust import load_model

    scratch = Path(tempfile.mkdtemp(prefix="switchyard-bench-rollback-"))
    models = scratch / "models"
    env = support.clean_env(SWITCHYARD_SUPERVISE="false", SWITCHYARD_SHADOW_MIN_REQUESTS="0")
    os.environ.update({k: v for k, v in env.items() if k.startswith("SWITCHYARD_")})
    train("sample", models)
    source = models / "sample" / "1"
    inner, manifest = load_model(source, support.trust(), modules=("testmodels",))
    known = [row.input["description"] for row in manifest.golden]
    support.artifact_with_model(source, models, "sample", testmodels.OnUnseen(inner, known, fail=True, fail_every=5))
    with (ROOT / "data" / "sample" / "companies.csv").open() as fh:
        texts = [row["description"] for row in csv.DictReader(fh) if row["description"] not in known]
    lines: list[str] = []
    try:
        for way, promote in (
            ("plain promote, watched", ("promote", "--watch-seconds", "120")),
            ("canary, first step 5%", ("promote", "--canary", "5,50,100", "--step-seconds", "120")),
        ):
            for run in range(args.runs):
                figures = once(models, scratch / f"run-{len(lines)}-{run}", args, promote, texts, env)
                log(f"{way}, run {run + 1}: {figures}")
                lines.append(f"  {way:<24} run {run + 1}: {figures}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\nRollback benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, sample models, router "
        f"{args.router}, concurrency {args.concurrency}, a version failing 1 request in 5, default analysis settings"
    )
    print("\n".join(lines))
    return 0


def once(
    models: Path,
    run_dir: Path,
    args: argparse.Namespace,
    promote: tuple[str, ...],
    texts: list[str],
    env: dict[str, str],
) -> str:
    port = free_port()
    base = [sys.executable, "controller/release.py", "--models-dir", str(models), "--run-dir", str(run_dir)]
    base += ["--router", args.router, "--port", str(port)]

    def release(*command: str) -> str:
        done = subprocess.run([*base[:2], *command, *base[2:]], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"release {' '.join(command)}: {done.stderr.strip()}")
        return done.stdout

    rows: list[tuple[float, float, int, str | None]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(transport=httpx.HTTPTransport(retries=0), timeout=15.0) as http:
            i = index * 41
            while not stop.is_set():
                i += 1
                sent = time.time()
                try:
                    response = http.post(
                        f"http://127.0.0.1:{port}/predict", json={"description": texts[i % len(texts)]}
                    )
                    row = (sent, time.time(), response.status_code, response.headers.get("x-model-version"))
                except httpx.HTTPError:
                    row = (sent, time.time(), 0, None)
                with lock:
                    rows.append(row)

    release("up", "sample", "1")
    release("stage", "2", "--no-shadow")
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3.0)  # v1's record of live traffic
        release(*promote)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            history = json.loads(release("history", "--json"))
            if any(h["actor"] == "agent (automatic)" and h["action"] in ("rollback", "abort") for h in history):
                break
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        release("down")
    bad = [r for r in rows if r[3] == "sample/2" or r[2] not in (200,)]
    failed = [r for r in rows if r[2] != 200]
    if not failed:
        return "no failed answer: nothing to roll back"
    first_bad = min(r[1] for r in failed)
    last_bad = max(r[0] for r in bad)
    return (
        f"first failed answer -> last request the bad version answered: {last_bad - first_bad:.2f} s; "
        f"{len(failed)} failed of {len(rows)} requests"
    )


if __name__ == "__main__":
    sys.exit(main())
