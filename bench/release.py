"""Release benchmark: how fast a flip takes effect, how fast rollback is, and what the router costs.

    python -m bench.release [--seconds 5] [--concurrency 32] [--routers nginx,builtin]

For each router, on the project's sample models (rules v1, TF-IDF v2) in a scratch registry:
- promote: wall time of `release.py promote` (the CLI, as a user runs it) and time from its start to
  the first request answered by the new version, seen by a client polling the router;
- rollback: the same, plus the in-process `Deployment.rollback()` time (lock, state, health check,
  flip, commit: what remains once Python has started);
- throughput and p50/p99 through the router against calling the live instance directly, measured in
  the same run with wrk at the same concurrency.
Goals from the issue: rollback under 200 ms; nginx costs under 10% of direct throughput, builtin
under 30%. Loopback only; every run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.load import lua_script, wrk
from bench.serve import ROOT, log, train
from controller.drivers.host import free_port

BODY = {"description": "We operate natural gas pipelines and refineries in Texas."}


def release(models: Path, run_dir: Path, router: str, port: int, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "controller/release.py",
            *args,
            "--models-dir",
            str(models),
            "--run-dir",
            str(run_dir),
            "--router",
            router,
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def first_served(url: str, version: str, started: threading.Event, result: list[float]) -> None:
    """Poll the router; record when the first answer from ``version`` arrives."""
    with httpx.Client(timeout=5) as client:
        started.wait()
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            if client.post(url + "/predict", json=BODY).headers.get("x-model-version") == version:
                result.append(time.perf_counter())
                return


def flip_timing(
    models: Path, run_dir: Path, router: str, port: int, args: tuple[str, ...], version: str
) -> tuple[float, float]:
    go = threading.Event()
    seen: list[float] = []
    poller = threading.Thread(target=first_served, args=(f"http://127.0.0.1:{port}", version, go, seen))
    poller.start()
    started = time.perf_counter()
    go.set()
    wall = release(models, run_dir, router, port, *args)
    poller.join()
    return wall, (seen[0] - started) if seen else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--routers", default="nginx,builtin" if shutil.which("nginx") else "builtin")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    from controller.run.deployment import Deployment
    from controller.settings import ControllerSettings

    scratch = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    models = scratch / "models"
    for config in ("sample-rules", "sample"):
        train(config, models)
    script = lua_script([BODY["description"]])
    lines = []
    try:
        for router in args.routers.split(","):
            run_dir, port = scratch / f"run-{router}", free_port()
            log(f"{router}: up v1, stage v2")
            release(models, run_dir, router, port, "up", "sample", "1")
            release(models, run_dir, router, port, "stage", "2")
            promote_wall, promote_seen = flip_timing(models, run_dir, router, port, ("promote",), "sample/2")
            rollback_wall, rollback_seen = flip_timing(models, run_dir, router, port, ("rollback",), "sample/1")
            settings = ControllerSettings(models_dir=models, run_dir=run_dir, router=router, router_port=port)
            deployment = Deployment(settings, say=lambda _: None)
            in_process = []
            for _ in range(5):  # forward and back: each call is a full rollback
                started = time.perf_counter()
                deployment.rollback()
                in_process.append(time.perf_counter() - started)
            live = deployment.status()
            direct_port = next(s["url"] for s in live["slots"] if s["role"] == "live").rsplit(":", 1)[1]
            log(f"{router}: throughput through the router and direct, c={args.concurrency}")
            wrk(int(direct_port), args.concurrency, 1, script)
            direct = wrk(int(direct_port), args.concurrency, args.seconds, script)
            routed = wrk(port, args.concurrency, args.seconds, script)
            release(models, run_dir, router, port, "down")
            cost = 1 - routed["rps"] / direct["rps"]
            lines.append(
                f"{router:<8} promote CLI {promote_wall * 1000:6.0f} ms, first v2 answer after "
                f"{promote_seen * 1000:6.0f} ms | rollback CLI {rollback_wall * 1000:5.0f} ms, first v1 answer "
                f"after {rollback_seen * 1000:5.0f} ms, in-process rollback median "
                f"{sorted(in_process)[2] * 1000:5.1f} ms\n"
                f"         direct {direct['rps']:7.0f} req/s p50 {direct['p50']:.2f} ms p99 {direct['p99']:.2f} ms"
                f" | via router {routed['rps']:7.0f} req/s p50 {routed['p50']:.2f} ms p99 {routed['p99']:.2f} ms"
                f" | router costs {cost:.0%} of direct throughput, errors {routed['errors']:.0f}"
            )
    finally:
        script.unlink()
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\nRelease benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, sample models, "
        f"concurrency {args.concurrency}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
