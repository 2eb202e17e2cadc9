"""The analysis and the agent's policy on metrics as the service writes them: each signal is a
comparison with the old slot, a regression is named with its figures, a handful of healthy requests
decides nothing, and every branch of the policy is reached from recorded observations."""

from __future__ import annotations

from typing import Any

import pytest

from controller.core import analysis, policy
from controller.core.analysis import Sample
from controller.core.facts import Canary, Facts, Instance, Op, Rollout, Watch
from controller.settings import ControllerSettings

SETTINGS = ControllerSettings(supervise=True)
LABELS = ["Energy", "Technology", "Healthcare", "Utilities"]


def metrics(
    latency_s: float | list[float], n: int, errors: int = 0, label: str | None = None, shadow: int = 0
) -> Sample:
    """What an instance's /metrics would say after ``n`` live requests (and ``shadow`` copies); a list of
    latencies is taken in turn."""
    from prometheus_client import generate_latest

    from service.observe import Metrics, PredictionCollector

    registry = Metrics("sample", 2, "0" * 64)
    counts = dict.fromkeys(LABELS, 0)
    for i in range(n):
        status = "500" if i < errors else "200"
        registry.requests.labels("/predict", "POST", status, "live").inc()
        took = latency_s[i % len(latency_s)] if isinstance(latency_s, list) else latency_s
        registry.latency.labels("/predict", status, "live").observe(took)
        if status == "200":
            counts[label or LABELS[i % len(LABELS)]] += 1
    for _ in range(shadow):
        registry.requests.labels("/predict", "POST", "500", "shadow").inc()
    registry.registry.register(PredictionCollector(lambda: (counts, {"Energy": shadow}, 1)))
    return analysis.parse(generate_latest(registry.registry).decode())


def test_the_analysis_reads_the_service_metrics_and_ignores_shadow_copies() -> None:
    sample = metrics(0.003, 300, errors=3, shadow=500)
    assert (sample.requests, sample.errors) == (300, 3)
    assert analysis.quantile(sample, 0.99) == pytest.approx(0.00299) and sum(sample.labels.values()) == 297


@pytest.mark.parametrize(
    ("new", "breach"),
    [
        (lambda: metrics(0.003, 300), None),
        (lambda: metrics(0.003, 60, errors=12), "worse on errors: 20.0% vs 0.0% 5xx over 60 requests"),
        (lambda: metrics(0.015, 300), "worse on latency: 100% of its requests took over 2x"),  # 5x a 3 ms model
        (lambda: metrics(0.3, 300), "worse on latency"),
        (lambda: metrics(0.003, 300, label="Utilities"), "worse on predictions: Utilities 25% -> 100%"),
    ],
    ids=["healthy", "errors", "five-times-slower", "slow", "one-label"],
)
def test_the_analysis_names_the_signal_that_breaks(new: Any, breach: str | None) -> None:
    verdict = analysis.judge(new(), metrics(0.003, 2000), SETTINGS)
    if breach is None:
        assert verdict.breach is None and verdict.enough
    else:
        assert verdict.breach is not None and verdict.breach.startswith(breach), verdict.breach
        assert "by chance: less than 1 time in 300" in verdict.breach


def test_at_a_small_share_the_new_slots_tail_is_held_to_the_old_slots_p99() -> None:
    # the old slot: p95 3 ms, p99 18 ms (read within its bucket); the new one has a fifth of its
    # requests at 10 ms, past twice the old p95 (what a process woken for each request meets on a
    # busy machine) but within its p99
    old = metrics([0.003] * 97 + [0.02] * 3, 2000)
    tail = metrics([0.003] * 4 + [0.01], 600)
    at_half = analysis.judge(tail, old, SETTINGS, weight=0.5)
    assert at_half.breach is not None and "2x the previous version's p95 (2.98 ms)" in at_half.breach
    at_five = analysis.judge(tail, old, SETTINGS, weight=0.05)
    assert at_five.breach is None and "2x the previous version's p99 (18.3 ms)" in at_five.summary
    gross = analysis.judge(metrics(0.1, 300), old, SETTINGS, weight=0.05)  # a 100 ms model still shows there
    assert gross.breach is not None and gross.breach.startswith("worse on latency")


def test_a_latency_twice_the_old_one_is_read_at_twice_not_at_the_next_bucket_bounds() -> None:
    # the old slot answers in 2.1 ms (bucket 2-3 ms), the new one in 7 ms (bucket 5-7.5 ms): 3.3x. Read
    # as whole buckets, the old p95 rounds up to 3 ms and its double (6 ms) up to the 7.5 ms bound, so
    # no request counted as slower and a version over 3x slower passed.
    verdict = analysis.judge(metrics(0.007, 300), metrics(0.0021, 2000), SETTINGS, weight=0.5)
    assert verdict.breach is not None and verdict.breach.startswith("worse on latency"), verdict.summary
    within = analysis.judge(metrics(0.0035, 300), metrics(0.0021, 2000), SETTINGS, weight=0.5)  # 1.7x
    assert within.breach is None, within.breach


def test_slow_requests_in_one_second_are_a_stall_not_a_slower_version() -> None:
    old = metrics(0.003, 4000)
    steady, stalled = metrics(0.003, 60), metrics(0.02, 60)
    new = metrics([0.003] * 9 + [0.02], 600)  # a tenth of the requests slow...
    naive = analysis.judge(new, old, SETTINGS, weight=0.5)
    assert naive.breach is not None and naive.breach.startswith("worse on latency")
    in_one_second = analysis.judge(new, old, SETTINGS, weight=0.5, blocks=(steady,) * 4 + (stalled,) + (steady,) * 5)
    assert in_one_second.breach is None and "in bursts" in in_one_second.summary  # ...all in one second
    spread = tuple(metrics([0.003] * 9 + [0.02], 60) for _ in range(10))  # ...in every second
    slower = analysis.judge(new, old, SETTINGS, weight=0.5, blocks=spread)
    assert slower.breach is not None and slower.breach.startswith("worse on latency")
    early = analysis.judge(metrics(0.003, 600), old, SETTINGS, weight=0.5, blocks=(steady,) * 4)
    assert early.breach is None and not early.enough, "a step does not pass before latency could be judged"
    assert "too few seconds yet" in early.summary


def test_every_answer_failing_is_found_within_a_handful_of_requests() -> None:
    old = metrics(0.003, 2000)
    found = next(n for n in range(1, 50) if analysis.judge(metrics(0.003, n, errors=n), old, SETTINGS).breach)
    assert found <= 5


def test_a_handful_of_healthy_requests_decides_nothing() -> None:
    verdict = analysis.judge(metrics(0.003, 40), metrics(0.003, 2000), SETTINGS)
    assert verdict.breach is None and not verdict.enough
    for concurrent in (True, False):  # and none at all, in either mode, is no verdict rather than an error
        empty = analysis.judge(metrics(0.003, 0), metrics(0.003, 2000), SETTINGS, concurrent=concurrent)
        assert empty.breach is None and not empty.enough


def test_the_watch_compares_the_new_slot_with_the_old_record() -> None:
    record = metrics(0.003, 2000, errors=10)
    healthy = analysis.judge(metrics(0.003, 400, errors=2), record, SETTINGS, concurrent=False)
    assert healthy.breach is None
    broken = analysis.judge(metrics(0.003, 400, errors=60), record, SETTINGS, concurrent=False)
    assert broken.breach is not None and broken.breach.startswith("worse on errors: 15.0% vs 0.5%")


def test_while_nothing_is_found_the_words_say_how_soon_a_regression_would_show() -> None:
    quiet = analysis.judge(metrics(0.003, 300, errors=1), metrics(0.003, 1200, errors=3), SETTINGS, seconds=30)
    assert quiet.breach is None
    assert quiet.summary.startswith("no difference found yet over 300 requests: 5xx 0.3% vs 0.2%")
    assert "At this traffic a 2x error rate (0.5%) would show within about" in quiet.summary
    # a faster stream shows the same regression sooner
    busy = analysis.judge(metrics(0.003, 300, errors=1), metrics(0.003, 1200, errors=3), SETTINGS, seconds=3)
    assert _seconds(busy.summary) < _seconds(quiet.summary)
    settled = analysis.judge(metrics(0.003, 3000, errors=6), metrics(0.003, 12000, errors=20), SETTINGS, seconds=30)
    assert settled.summary.startswith("not worse over 3,000 requests") and "would show" not in settled.summary


def _seconds(summary: str) -> float:
    number, unit = summary.split("would show within about ")[1].split()[:2]
    return float(number) * {"s": 1, "min": 60, "h": 3600}[unit.rstrip(".")]


def test_a_router_that_sends_another_share_than_its_weight_is_reported() -> None:
    verdict = analysis.judge(metrics(0.003, 300), metrics(0.003, 2000), SETTINGS, weight=0.5)
    assert verdict.mismatch is not None and "not 50%" in verdict.mismatch
    assert analysis.judge(metrics(0.003, 300), metrics(0.003, 900), SETTINGS, weight=0.25).mismatch is None


# ------------------------------------------------------------------ the policy, branch by branch


def slot(color: str, version: int) -> Instance:
    return Instance(color, version, f"h-{color}", 9000, f"/s/{color}.sock", "0" * 64, started_at=0.0)


def deployed(rollout: Rollout | None) -> Facts:
    return Facts(
        name="sample",
        active="blue",
        previous="green",
        slots={"blue": slot("blue", 1), "green": slot("green", 2)},
        rollout=rollout,
    )


CANARY = Canary("green", started_at=1000.0, steps=(10, 50, 100), step_seconds=60)
WATCH = Watch("blue", watch_seconds=300, started_at=1000.0)
HEALTHY, OLD = metrics(0.003, 300), metrics(0.003, 2000)
CASES = {
    "an operation in flight": (
        deployed(CANARY).replace(op=Op("promote", "green", 2, "flip")),
        policy.Seen(1100),
        policy.WAIT,
    ),
    "a dead live slot": (deployed(None), policy.Seen(1100, broken=True), policy.HEAL),
    "nothing to analyse": (deployed(None), policy.Seen(1100), policy.WAIT),
    "a dead canary": (deployed(CANARY), policy.Seen(1010, canary_alive=False), policy.ABORT),
    "no metrics yet": (deployed(CANARY), policy.Seen(1010), policy.WAIT),
    "a failing canary": (deployed(CANARY), policy.Seen(1010, new=metrics(0.003, 60, errors=30), old=OLD), policy.ABORT),
    "a canary step still running": (deployed(CANARY), policy.Seen(1010, new=HEALTHY, old=OLD), policy.WAIT),
    "a canary step that passed": (
        deployed(CANARY),
        policy.Seen(1061, new=HEALTHY, old=metrics(0.003, 2700)),
        policy.ADVANCE,
    ),
    "a step too thin to pass": (deployed(CANARY), policy.Seen(1061, new=metrics(0.003, 40), old=OLD), policy.WAIT),
    "a failing watch": (
        deployed(WATCH),
        policy.Seen(1010, new=metrics(0.003, 60, errors=30), old=OLD),
        policy.ROLLBACK,
    ),
    "a watch under way": (deployed(WATCH), policy.Seen(1010, new=HEALTHY, old=OLD), policy.WAIT),
    "a watch that is over": (deployed(WATCH), policy.Seen(1301, new=HEALTHY, old=OLD), policy.CONCLUDE),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_policy_decides_each_case(case: str) -> None:
    facts, seen, expected = CASES[case]
    action = policy.decide(facts, seen, SETTINGS)
    assert action.command == expected, action.reason
    if expected in (policy.ABORT, policy.ROLLBACK):
        assert action.reason.startswith("automatic rollback: ")
