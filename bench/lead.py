"""What the lead-sentences block costs and buys: the default text model trained with and without it
(``model.params.lead_sentences``) in the same run, on the same data and split.

    python -m bench.lead [--seconds 4] [--rounds 3]

On the real data (the sample data when the shared data is absent): grouped 5-fold CV accuracy and
macro-F1, the out-of-fold accuracy on the extra evaluation set, and in-process ``predict_proba``
time per row for one row and for a batch of 32 (one thread; the rounds alternate the two models and
the best of each is kept), then the service's requests/s and p99 under wrk (batching on, one worker,
single-row requests at concurrency 32; the rounds alternate too). Goals from the issue: one row at
most 0.5 ms, and the service's throughput with the block no lower than without it.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from artifact.signing import Trust, key_id
from artifact.signing import trust as trust_key
from bench.load import lua_script
from bench.serve import ROOT, SHARED, in_process, log, measure, servers
from pipeline.config import load_config
from pipeline.train import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per model and round for the timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections for the service's figures")
    args = parser.parse_args()
    real = SHARED.is_file()
    config_path = ROOT / "pipeline" / "configs" / ("industry.toml" if real else "sample.toml")
    data = SHARED if real else ROOT / "data" / "sample" / "companies.csv"
    with data.open() as fh:
        texts = [row["description"] for row in csv.DictReader(fh)][:64]
    key = Ed25519PrivateKey.generate()
    trust = Trust({key_id(key.public_key()): key.public_key()})
    variants: dict[str, Path] = {}
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-lead-") as scratch:
        for label, lead in (("lead_sentences = 2", 2), ("no lead block", 0)):
            config = load_config(config_path)
            config.model.params["lead_sentences"] = lead
            log(f"training {config.name} with {label}")
            path, manifest = train(config, Path(scratch) / label.replace(" ", "-"), key)
            variants[label] = path
            cv = manifest.metrics["cv"] or {}
            extra: dict[str, float] = next(iter(manifest.metrics["eval_sets"].values()), {})
            figures[label] = {
                "cv accuracy": cv.get("accuracy", float("nan")),
                "cv macro-F1": cv.get("macro_f1", float("nan")),
                "extra set accuracy": extra.get("accuracy", float("nan")),
            }
        best: dict[str, dict[int, float]] = {}
        for round_ in range(args.rounds):
            for label, path in variants.items():
                log(f"round {round_ + 1}: timing {label}")
                run = in_process(path, texts, args.seconds, sizes=(1, 32), trust=trust)
                kept = best.setdefault(label, run)
                best[label] = {size: min(kept[size], micros) for size, micros in run.items()}
        keys = Path(scratch) / "trusted"
        trust_key(key.public_key(), keys)
        script = lua_script(texts)
        served: dict[str, dict[str, float]] = {}
        for round_ in range(args.rounds):
            for label, path in variants.items():
                log(f"round {round_ + 1}: the service with {label} under wrk at c={args.concurrency}")
                (server,) = servers(path, ["batch-on"], trusted_keys=keys)
                with server:
                    load = measure(server, args.concurrency, args.seconds, script)
                if load["rps"] > served.setdefault(label, load)["rps"]:
                    served[label] = load
    base = best["no lead block"]
    print(f"\nLead-sentences block, {config_path.name}, same run, best of {args.rounds} rounds")
    print(
        f"{'':20}{'cv acc':>8}{'cv F1':>8}{'extra acc':>11}{'1 row us':>10}{'x32 us/row':>12}{'1 row vs none':>15}"
        f"{'service req/s':>15}{'p99 ms':>8}{'req/s vs none':>15}"
    )
    for label, figs in figures.items():
        one, batch = best[label][1], best[label][32] / 32
        rps, p99 = served[label]["rps"], served[label]["p99"]
        print(
            f"{label:20}{figs['cv accuracy']:8.4f}{figs['cv macro-F1']:8.4f}{figs['extra set accuracy']:11.4f}"
            f"{one:10.1f}{batch:12.1f}{one / base[1]:14.2f}x{rps:15.0f}{p99:8.2f}"
            f"{rps / served['no lead block']['rps']:14.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
