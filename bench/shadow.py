"""Shadow benchmark: what copying live traffic to a staged candidate costs the live path.

    python -m bench.shadow [--seconds 8] [--concurrency 32] [--rounds 2] [--routers nginx]

On the real-data TF-IDF model (industry v1 live, a retrain of it, v2, staged; the sample model when
the shared data is absent), through the router with wrk (keep-alive, one real description a request,
rotating over 64): live req/s and p99 with the candidate staged without shadow traffic, with shadow
at 100% and the default rate cap, and with the cap lifted (every request copied). The settings
alternate in rounds, in the same run, and the best round of each is kept.
Goal from the issue: live req/s within 10% and live p99 within 15% of shadow off, at concurrency 32.
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
import time
from pathlib import Path

from bench.load import lua_script, wrk
from bench.serve import ROOT, SHARED, log, train
from controller.drivers.host import free_port

SETTINGS = {
    "off": ("--no-shadow",),
    "on (default cap)": (),
    "on (no cap)": ("--shadow-rate", "1000000"),
}


def release(models: Path, run_dir: Path, router: str, port: int, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    argv = [sys.executable, "controller/release.py", *args, "--models-dir", str(models), "--run-dir", str(run_dir)]
    argv += ["--router", router, "--port", str(port)]
    return subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout


def made(models: Path, run_dir: Path, router: str, port: int) -> int:
    """Copies the live instance has made for the staged candidate so far (sent or dropped)."""
    found = json.loads(release(models, run_dir, router, port, "evidence", "--json"))
    return int(found.get("requests", 0)) + int(found.get("dropped", 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--routers", default="nginx" if shutil.which("nginx") else "builtin")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    real = SHARED.is_file()
    name = "industry" if real else "sample"
    data = SHARED if real else ROOT / "data" / "sample" / "companies.csv"
    with data.open() as fh:
        texts = [row["description"] for row in csv.DictReader(fh)][:64]
    scratch = Path(tempfile.mkdtemp(prefix="switchyard-bench-shadow-"))
    models = scratch / "models"
    for version in (1, 2):
        log(f"training {name} v{version}")
        train(name, models)
    script = lua_script(texts)
    lines = []
    try:
        for router in args.routers.split(","):
            run_dir, port = scratch / f"run-{router}", free_port()
            log(f"{router}: up {name} v1")
            release(models, run_dir, router, port, "up", name, "1")
            wrk(port, args.concurrency, 2, script)  # warm-up
            best: dict[str, dict[str, float]] = {}
            copies: dict[str, int] = {}
            for round_ in range(args.rounds):
                for label, options in SETTINGS.items():
                    release(models, run_dir, router, port, "stage", "2", *options)
                    before = made(models, run_dir, router, port)
                    log(f"{router}: round {round_ + 1}, shadow {label}, c={args.concurrency}")
                    result = wrk(port, args.concurrency, args.seconds, script)
                    if label not in best or result["rps"] > best[label]["rps"]:
                        best[label] = result
                    if options != ("--no-shadow",):
                        time.sleep(1)  # the copies' records are written twice a second
                        copies[label] = made(models, run_dir, router, port) - before
            release(models, run_dir, router, port, "down")
            off = best["off"]
            lines.append(f"{router}:")
            for label, result in best.items():
                ratio = f"req/s {result['rps'] / off['rps']:.2f}x, p99 {result['p99'] / off['p99']:.2f}x of off"
                extra = f", {copies[label]} copies in the last round" if label in copies else ""
                lines.append(
                    f"  shadow {label:<17} {result['rps']:7.0f} req/s  p50 {result['p50']:.2f} ms  "
                    f"p99 {result['p99']:.2f} ms  errors {result['errors']:.0f}  ({ratio}{extra})"
                )
    finally:
        script.unlink()
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\nShadow benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {name} TF-IDF model "
        f"live and a retrain of it staged, concurrency {args.concurrency}, {args.seconds:g} s a run, "
        f"best of {args.rounds}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
