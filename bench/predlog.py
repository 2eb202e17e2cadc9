"""What the prediction log costs: the service with every answer logged against logging off, in the same
run, on the same model and the same requests.

    python -m bench.predlog [--seconds 5] [--rounds 3] [--concurrency 32]

The sample tf-idf model, one worker, batching on, single-row requests under wrk; the rounds alternate
the two servers and each keeps its best requests/s (and that run's p99). The goal from the issue: at
most 10% fewer requests/s and at most 10% more p99 with the log on. It also prints how many answers
reached the log file, so a log that keeps up is told apart from one that drops.
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from artifact.signing import trust as trust_key
from bench.load import lua_script
from bench.serve import ROOT, log, measure, servers
from pipeline.config import load_config
from pipeline.train import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk time per server and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    args = parser.parse_args()
    with (ROOT / "data" / "sample" / "companies.csv").open() as fh:
        texts = [row["description"] for row in csv.DictReader(fh)][:64]
    key = Ed25519PrivateKey.generate()
    served: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-predlog-") as scratch:
        folder = Path(scratch)
        log("training the sample tf-idf model")
        model, _ = train(load_config(ROOT / "pipeline" / "configs" / "sample.toml"), folder / "models", key)
        trust_key(key.public_key(), folder / "trusted")
        script = lua_script(texts)
        database = folder / "predictions.sqlite"
        for round_ in range(args.rounds):
            for label in ("logging off", "logging on"):
                (server,) = servers(model, ["batch-on"], trusted_keys=folder / "trusted")
                if label == "logging on":
                    server.argv += ["--prediction-log", str(database), "--slot", "blue"]
                log(f"round {round_ + 1}: {label} under wrk at c={args.concurrency}")
                with server:
                    load = measure(server, args.concurrency, args.seconds, script)
                if load["rps"] > served.setdefault(label, load)["rps"]:
                    served[label] = load
        with sqlite3.connect(database) as conn:
            (logged,) = conn.execute("SELECT count(*) FROM predictions").fetchone()
    off, on = served["logging off"], served["logging on"]
    print(f"\nPrediction log, same run, best of {args.rounds} rounds, c={args.concurrency}, {args.seconds:g} s each")
    print(f"{'':14}{'req/s':>10}{'p99 ms':>9}")
    for label, figures in served.items():
        print(f"{label:14}{figures['rps']:10.0f}{figures['p99']:9.2f}")
    print(
        f"logging on / off: req/s {on['rps'] / off['rps']:.2f}x, p99 {on['p99'] / off['p99']:.2f}x "
        f"(goal: req/s >= 0.90x, p99 <= 1.10x); {logged} answers in the log file"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
