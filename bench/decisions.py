"""The agent's decisions, simulated: how often each rule rolls back a healthy version, and how soon it
catches a bad one, in the watch after a deploy and in a canary step.

    python -m bench.decisions [--runs 20] [--seconds 120] [--rates 50,500] [--canary 0.25] [--seed 1]

Thousands of simulated watches and canary steps, looked at every 0.25 s as the agent looks: request
streams with known rates (Poisson arrivals; each request fails, is slow or gets a label with a known
probability); in a watch the new slot against the previous slot's record of ten minutes at the same
traffic, in a canary step (``--canary``, a quarter of the traffic) against the old slot in the same looks.
Two rules side by side: the one before the sequential statistics (a 5xx rate over 5% of at least 50
requests; more than 5% of requests slower than 2x the old p99 + 10 ms after 200; a label total
variation over 0.3 after 200) and :func:`controller.core.analysis.judge` with the default settings
(``analysis_alpha`` 1% per watch).

Printed: for a healthy version (the same rates as the old one), the share of watches rolled back
(target: at most alpha, 1%); for a bad one, the share caught within the watch and the median time
and requests it took, at 50 and 500 requests a second.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import zlib
from dataclasses import dataclass

import numpy as np

from controller.core import analysis
from controller.core.analysis import Sample
from controller.settings import ControllerSettings
from service.observe import LATENCY_BUCKETS

BUCKETS = (*LATENCY_BUCKETS, math.inf)  # the service's own
LABELS = ("a", "b", "c", "d", "e")
BASE_LABELS = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
LOOK = 0.25


@dataclass(frozen=True)
class Stream:
    """What one slot's requests do: 5xx probability, latency (lognormal median in s), label mix."""

    error_rate: float = 0.01
    latency: float = 0.002
    labels: tuple[float, ...] = tuple(BASE_LABELS)

    def sample(self, rng: np.random.Generator, requests: int) -> Sample:
        errors = rng.binomial(requests, self.error_rate)
        seconds = rng.lognormal(math.log(self.latency), 0.3, requests)
        counts = np.searchsorted(BUCKETS, seconds)
        cumulative = np.cumsum(np.bincount(counts, minlength=len(BUCKETS)))
        picked = rng.multinomial(requests - errors, self.labels)
        return Sample(
            float(requests),
            float(errors),
            tuple((le, float(c)) for le, c in zip(BUCKETS, cumulative, strict=True)),
            dict(zip(LABELS, map(float, picked), strict=True)),
        )


def add(a: Sample, b: Sample) -> Sample:
    before = dict(a.buckets)
    return Sample(
        a.requests + b.requests,
        a.errors + b.errors,
        tuple((le, before.get(le, 0.0) + c) for le, c in b.buckets),
        {k: a.labels.get(k, 0.0) + v for k, v in b.labels.items()},
    )


def old_rule(new: Sample, old: Sample) -> bool:
    """The rule before the sequential statistics: fixed lines on cumulative counts."""
    if new.requests < 50:
        return False
    if new.errors / new.requests > 0.05:
        return True
    if new.requests < 200:
        return False
    old99 = analysis.quantile(old, 0.99)
    if old99 is not None and not math.isinf(old99):
        total = new.buckets[-1][1]
        if total and analysis.slower_than(new, 2 * old99 + 0.010) / total > 0.05:
            return True
    moved = analysis.shift(new.labels, old.labels)
    return moved is not None and moved > 0.3


def simulate(
    rule: str,
    new: Stream,
    old: Stream,
    per_second: float,
    seconds: float,
    rng: np.random.Generator,
    weight: float | None = None,
) -> tuple[float, float] | None:
    """(seconds, requests of the new slot) until the rule rolls back, or None if it never does. A
    watch (``weight`` None): all traffic on the new slot, against the old slot's record of ten
    minutes. A canary step: the new slot takes ``weight`` of the traffic and the old one the rest, in
    the same looks."""
    settings = ControllerSettings()
    baseline = old.sample(rng, int(per_second * 600)) if weight is None else Sample()
    share = 1.0 if weight is None else weight
    seen = second = Sample()
    blocks: list[Sample] = []  # second by second, as the agent keeps them for the latency test's bursts
    t = 0.0
    while t < seconds:
        t += LOOK
        look = new.sample(rng, int(rng.poisson(per_second * share * LOOK)))
        seen, second = add(seen, look), add(second, look)
        if weight is not None:
            baseline = add(baseline, old.sample(rng, int(rng.poisson(per_second * (1 - weight) * LOOK))))
        if round(t / LOOK) % round(1 / LOOK) == 0:
            blocks.append(second)
            second = Sample()
        if seen.requests == 0 or baseline.requests == 0:
            continue
        if rule == "before" and old_rule(seen, baseline):
            return t, seen.requests
        if rule == "sequential":
            verdict = analysis.judge(
                seen, baseline, settings, concurrent=weight is not None, weight=weight, blocks=tuple(blocks)
            )
            if verdict.breach:
                return t, seen.requests
    return None


SCENARIOS = [
    ("healthy, 1% errors", Stream(0.01), Stream(0.01)),
    ("healthy, 2% errors", Stream(0.02), Stream(0.02)),
    ("healthy, 3% errors", Stream(0.03), Stream(0.03)),
    ("healthy, 4% errors", Stream(0.04), Stream(0.04)),
    ("2x errors (1% -> 2%)", Stream(0.02), Stream(0.01)),
    ("5x errors (1% -> 5%)", Stream(0.05), Stream(0.01)),
    ("20x errors (1% -> 20%)", Stream(0.20), Stream(0.01)),
    ("every answer fails", Stream(1.0), Stream(0.01)),
    ("1.5x latency (2 ms -> 3 ms)", Stream(latency=0.003), Stream()),
    ("3x latency", Stream(latency=0.006), Stream()),
    ("5x a 1 ms model", Stream(latency=0.005), Stream(latency=0.001)),
    ("10% of answers moved", Stream(labels=(0.4, 0.25, 0.2, 0.1, 0.05)), Stream()),
    ("30% of answers moved", Stream(labels=(0.6, 0.2, 0.1, 0.05, 0.05)), Stream()),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="simulated watches per scenario, rate and rule")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long a watch lasts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rates", default="50,500", help="requests a second, comma-separated")
    parser.add_argument("--canary", type=float, default=0.25, help="the new slot's share in a canary step")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    modes: list[tuple[str, float | None]] = [("watch", None), (f"canary {args.canary:.0%}", args.canary)]
    started = time.perf_counter()
    print(f"# {args.runs} simulated watches and canary steps of {args.seconds:g} s per cell, looked at every {LOOK} s")
    print("| scenario | mode | req/s | rule | rolled back | median time to it | median requests |")
    print("|---|---|---|---|---|---|---|")
    for name, new, old in SCENARIOS:
        for mode, weight in modes:
            for per_second in rates:
                for rule in ("before", "sequential"):
                    # crc32, not hash(): the same seed gives the same streams in every process
                    rng = np.random.default_rng([args.seed, zlib.crc32(f"{name} {mode}".encode()), int(per_second)])
                    outcomes = [
                        simulate(rule, new, old, per_second, args.seconds, rng, weight) for _ in range(args.runs)
                    ]
                    caught = [o for o in outcomes if o is not None]
                    share = len(caught) / args.runs
                    when = f"{statistics.median(o[0] for o in caught):.2f} s" if caught else "-"
                    many = f"{statistics.median(o[1] for o in caught):.0f}" if caught else "-"
                    print(f"| {name} | {mode} | {per_second:g} | {rule} | {share:.1%} | {when} | {many} |", flush=True)
    print(f"# {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
