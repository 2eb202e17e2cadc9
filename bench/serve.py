"""Serving benchmark: the Switchyard service against its floors and a naive baseline, in one run.

    python -m bench.serve [--seconds 5] [--concurrency 1,32,128] [--quick]

On the real-data ``industry`` model (trained into bench/results/models when missing; the sample model
where ../shared is absent). Measured in the same run, on the same machine:

- in-process ``predict_proba`` for 1 row and batches of 8 / 32 / 128 (the model floor);
- a raw ASGI app on uvicorn returning a constant (the HTTP floor);
- a naive FastAPI endpoint (pydantic body, sync def, one row per ``predict_proba``);
- the Switchyard service with batching off and on, with 1 and 2 workers, and once with its workers
  not pinned to a CPU (``--cpu-affinity off``) to show what pinning does;

each under wrk (keep-alive connections, single-row requests rotating over 64 real descriptions) at
each concurrency: requests/s, p50, p99, errors, CPU microseconds per request (from /proc, the whole
process tree) and RSS. Prints a table and the ratios the issues set as bars. The in-process floor
is measured before and after the servers and averaged; the concurrency-1 bar, a difference of
tenths of a millisecond, is judged on three more runs of the batching service, each right after an
in-process 1-row run (the median difference). Loopback only; every run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from artifact.signing import Trust
from bench.load import lua_script, wrk
from controller.drivers.host import free_port

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "companies" / "russell3000_yahoo.csv"
RESULTS = ROOT / "bench" / "results"
TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- model


def train(config: str, models: Path) -> None:
    """`python -m pipeline train` with one of the shipped configs, into ``models``."""
    command = [sys.executable, "-m", "pipeline", "train", "--config", f"pipeline/configs/{config}.toml"]
    subprocess.run([*command, "--models-dir", str(models)], cwd=ROOT, check=True, capture_output=True)


def ensure_model() -> tuple[Path, list[str]]:
    """The newest industry model in bench/results/models (trained if absent) and 64 descriptions."""
    from artifact.registry import list_versions

    real = SHARED.is_file()
    config = "industry" if real else "sample"
    data = SHARED if real else ROOT / "data" / "sample" / "companies.csv"
    models = RESULTS / "models"
    name = "industry" if real else "sample"
    if not list_versions(models, name):
        log(f"training the {config} model (once; reused by later runs)")
        train(config, models)
    with data.open() as fh:
        texts = [row["description"] for row in csv.DictReader(fh)][:64]
    return models / name / str(list_versions(models, name)[-1]), texts


def shown(path: Path) -> str:
    """A path as the repository names it: figures in the README must not carry one machine's folders."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else path.name


def in_process(
    model_dir: Path,
    texts: list[str],
    seconds: float,
    sizes: tuple[int, ...] = (1, 8, 32, 128),
    trust: Trust | None = None,
) -> dict[int, float]:
    """Microseconds per call of predict_proba for each batch size, ``seconds / 4`` each (``trust``:
    the keys the model was signed with; the pipeline's own by default)."""
    from threadpoolctl import threadpool_limits

    from artifact.trust import load_model

    model, _ = load_model(model_dir, trust or Trust.from_folder(ROOT / "keys" / "trusted"))
    out: dict[int, float] = {}
    with threadpool_limits(1):
        for size in sizes:
            # the same 64 descriptions the load generator rotates over, so the floor is like for like
            ring = texts * (size // len(texts) + 2)
            batches = [ring[i : i + size] for i in range(len(texts))]
            model.predict_proba(batches[0])
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / 4:
                model.predict_proba(batches[calls % len(batches)])
                calls += 1
            out[size] = (time.perf_counter() - started) / calls * 1e6
    return out


# ---------------------------------------------------------------------------------------------- servers


def tree(pid: int) -> list[int]:
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) in pids:
                pids.append(int(entry))
    return pids


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def rss_mib(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match:
            out.append(int(match.group(1)) / 1024)
    return out


@dataclass
class Server:
    label: str
    argv: list[str]
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        body = {"description": "We make software."}
        while time.monotonic() < deadline:
            try:
                if httpx.post(f"http://127.0.0.1:{self.port}/predict", json=body, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def servers(model_dir: Path, modes: list[str], trusted_keys: Path | None = None) -> list[Server]:
    """Servers of ``model_dir`` for ``modes`` (``trusted_keys``: the folder of the keys it was signed
    with; the pipeline's own by default)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    base["PYTHONPATH"] = str(ROOT)
    py = sys.executable
    uvicorn = [py, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]
    out = []
    for mode in modes:
        port = free_port()
        if mode == "raw-asgi":
            argv, env = [*uvicorn, "--port", str(port), "bench.apps:raw_app"], base
        elif mode == "naive-fastapi":
            argv = [*uvicorn, "--port", str(port), "--factory", "bench.apps:naive_app"]
            env = {**base, "BENCH_MODEL_FILE": str(model_dir / "model.joblib"), "OMP_NUM_THREADS": "1"}
        else:
            workers = "2" if "-2w" in mode else "1"
            batching = "--batching" if "batch-on" in mode else "--no-batching"
            argv = [py, "-m", "service", "--model", str(model_dir), "--port", str(port), "--workers", workers, batching]
            if trusted_keys is not None:
                argv += ["--trusted-keys", str(trusted_keys)]
            if mode.endswith("unpinned"):
                argv += ["--cpu-affinity", "off"]
            env = base
        out.append(Server(mode, argv, env, port))
    return out


def measure(server: Server, concurrency: int, seconds: float, script: Path) -> dict[str, float]:
    assert server.proc is not None
    wrk(server.port, concurrency, min(1.0, seconds), script)  # warm-up
    pids = tree(server.proc.pid)
    before = cpu_ticks(pids)
    result = wrk(server.port, concurrency, seconds, script)
    used = (cpu_ticks(pids) - before) / TICKS
    result["cpu_us"] = used / max(1, result["requests"]) * 1e6
    workers = rss_mib(pids[1:] if len(pids) > 1 and "-2w" in server.label else pids[:1])
    result["rss"] = max(workers) if workers else 0.0
    return result


def paired_c1(
    server: Server, model_dir: Path, texts: list[str], seconds: float, script: Path, rounds: int = 3
) -> list[tuple[float, float]]:
    """(in-process 1-row ms, concurrency-1 p50 ms) measured back to back, ``rounds`` times: the
    concurrency-1 bar is a difference of tenths of a millisecond between two figures that each drift
    by several percent over minutes here, so each p50 is compared with a floor taken just before it."""
    pairs = []
    for _ in range(rounds):
        floor_ms = in_process(model_dir, texts, 4.0, sizes=(1,))[1] / 1000
        pairs.append((floor_ms, wrk(server.port, 1, seconds, script)["p50"]))
    return pairs


# ---------------------------------------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measured run")
    parser.add_argument("--concurrency", default="1,32,128", help="comma-separated connection counts")
    parser.add_argument("--quick", action="store_true", help="only the naive baseline and batching on, 1 worker")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    model_dir, texts = ensure_model()
    log(f"model {shown(model_dir)}")
    # The floor is measured before and after the servers and averaged: this machine drifts by
    # several percent over a run, and the concurrency-1 bar compares to it in tenths of a millisecond.
    before = in_process(model_dir, texts, args.seconds)
    modes = (
        ["naive-fastapi", "switchyard-batch-on-1w"]
        if args.quick
        else [
            "raw-asgi",
            "naive-fastapi",
            "switchyard-batch-off-1w",
            "switchyard-batch-on-1w",
            "switchyard-batch-on-1w-unpinned",
            "switchyard-batch-off-2w",
            "switchyard-batch-on-2w",
        ]
    )
    script = lua_script(texts)
    v2_script = lua_script(texts, model=model_dir.parent.name)
    ours = "switchyard-batch-on-1w"
    rows: dict[tuple[str, int], dict[str, float]] = {}
    pairs: list[tuple[float, float]] = []
    for server in servers(model_dir, modes):
        with server:
            for level in levels:
                log(f"{server.label} at concurrency {level}")
                rows[(server.label, level)] = measure(server, level, args.seconds, script)
            if server.label == ours and 32 in levels:
                log(f"{server.label}, Open Inference Protocol, at concurrency 32")
                rows[(f"{ours}-v2", 32)] = measure(server, 32, args.seconds, v2_script)
            if server.label == ours and 1 in levels:
                log(f"{server.label} at concurrency 1, each run right after an in-process 1-row run")
                pairs = paired_c1(server, model_dir, texts, args.seconds, script)
    script.unlink()
    v2_script.unlink()
    after = in_process(model_dir, texts, args.seconds)
    floor = {size: (before[size] + after[size]) / 2 for size in before}

    print(f"\nServing benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, model {shown(model_dir)}")
    print("\nin-process predict_proba (1 thread; mean of a run before and a run after the servers):")
    for size, micros in floor.items():
        print(
            f"  batch {size:>3}: {micros / 1000:7.3f} ms per call, {micros / size:8.1f} us per row"
            f"  (before {before[size] / 1000:.3f}, after {after[size] / 1000:.3f})"
        )
    print(
        f"\n{'server':<29}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU us/req':>12}"
        f"{'RSS MiB':>9}"
    )
    for (label, level), r in rows.items():
        print(
            f"{label:<29}{level:>5}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['errors']:>8.0f}"
            f"{r['cpu_us']:>12.0f}{r['rss']:>9.0f}"
        )

    def get(label: str, level: int, key: str) -> float | None:
        row = rows.get((label, level))
        return row[key] if row else None

    single_rate = 1e6 / floor[1]
    if pairs:
        print(f"\n{ours} at concurrency 1, each p50 right after an in-process 1-row run:")
        for floor_ms, p50 in pairs:
            print(f"  in-process {floor_ms:.3f} ms, p50 {p50:.3f} ms: + {p50 - floor_ms:.3f} ms")
    print("\nratios (bars from the issues):")
    checks = []
    c32, naive32 = get(ours, 32, "rps"), get("naive-fastapi", 32, "rps")
    if c32 and naive32:
        checks.append((f"c32 req/s vs naive FastAPI: {c32 / naive32:.2f}x", c32 / naive32 >= 3.0, ">= 3x"))
        checks.append(
            (
                f"c32 req/s vs in-process 1-row rate ({single_rate:.0f}/s): {c32 / single_rate:.2f}x",
                c32 / single_rate >= 0.8,
                ">= 0.8x",
            )
        )
    if pairs:
        over = statistics.median(p50 - floor_ms for floor_ms, p50 in pairs)
        checks.append(
            (
                f"c1 p50 over the in-process 1-row time (median of {len(pairs)} pairs): + {over:.3f} ms",
                over <= 0.3,
                "<= +0.3 ms",
            )
        )
    p50_128, p99_128 = get(ours, 128, "p50"), get(ours, 128, "p99")
    if p50_128 and p99_128:
        checks.append((f"c128 p99 / p50: {p99_128 / p50_128:.2f}", p99_128 / p50_128 < 4, "< 4"))
    errors = sum(r["errors"] for (label, _), r in rows.items() if label.startswith("switchyard"))
    checks.append((f"errors across all Switchyard runs: {errors:.0f}", errors == 0, "0"))
    rss = max((r["rss"] for (label, _), r in rows.items() if label.startswith("switchyard")), default=0)
    checks.append((f"max RSS per worker: {rss:.0f} MiB", rss < 250, "< 250 MiB"))
    v2 = get(f"{ours}-v2", 32, "rps")
    if v2 and c32:
        checks.append((f"Open Inference Protocol vs /predict at c32: {v2 / c32:.2f}x", True, "(informational)"))
    two = get("switchyard-batch-on-2w", 32, "rps")
    if two and c32:
        checks.append((f"2 workers vs 1 at c32: {two / c32:.2f}x", True, "(informational)"))
    for text, ok, bar in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {text}  (bar {bar})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
