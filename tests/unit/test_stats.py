"""The sequential statistics against references and by simulation: the confidence sequence holds its
truth however often it is read, a version no worse than the old one is called worse in at most
alpha of simulated watches that look at it again and again, and a real regression is found, a
total one within a handful of requests. Seeded, so a failure is a defect, not bad luck."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta as beta_dist

from controller.core.stats import (
    LOOKING,
    NOT_WORSE,
    WORSE,
    compare_events,
    compare_to_record,
    compare_to_share,
    log_mixture,
    overdispersion,
    proportion_cs,
    requests_to_show,
    sample_ratio,
)


def test_the_mixture_matches_its_closed_form_reference() -> None:
    # Beta(1, 1) mixture of Binomial likelihoods against p0 = 0.5, after 7 of 10: the integral over q
    # of q^7 (1-q)^3, divided by 0.5^10 (a table value: B(8, 4) = 1/1320)
    assert math.isclose(math.exp(log_mixture(7, 10, 0.5)), (1 / 1320) / 0.5**10, rel_tol=1e-9)
    # truncated above 0.6: the same integral from 0.6, over the prior's mass above 0.6
    tail = beta_dist.sf(0.6, 8, 4) * (1 / 1320) / 0.4
    assert math.isclose(math.exp(log_mixture(7, 10, 0.5, lower=0.6)), tail / 0.5**10, rel_tol=1e-9)


def test_the_confidence_sequence_holds_its_truth_at_every_look() -> None:
    rng = np.random.default_rng(7)
    alpha, truth, runs, looks = 0.05, 0.2, 200, 30
    missed = 0
    for _ in range(runs):
        draws = rng.random(looks * 25) < truth
        for n in range(25, looks * 25 + 1, 25):  # looked at after every 25 draws
            lo, hi = proportion_cs(float(draws[:n].sum()), n, alpha)
            if not lo <= truth <= hi:
                missed += 1
                break
    assert missed / runs <= alpha  # anytime-valid: a run that misses at any look counts once


def simulate(rate_new: float, rate_old: float, *, share: float, seconds: int, per_second: float, seed: int) -> str:
    """A canary step looked at every second: the first verdict that is not LOOKING, or LOOKING."""
    rng = np.random.default_rng(seed)
    n_new = n_old = x = y = 0.0
    for _ in range(seconds):
        a = rng.poisson(per_second * share)
        b = rng.poisson(per_second * (1 - share))
        n_new, n_old = n_new + a, n_old + b
        x, y = x + rng.binomial(a, rate_new), y + rng.binomial(b, rate_old)
        verdict = compare_events(x, n_new, y, n_old, alpha=0.01, effect=2.0, absolute=0.01, interval=False).verdict
        if verdict == WORSE:
            return verdict
    return LOOKING


@pytest.mark.parametrize("rate", [0.01, 0.03])
def test_a_version_as_good_as_the_old_is_rarely_called_worse(rate: float) -> None:
    runs = 200
    worse = sum(
        simulate(rate, rate, share=0.25, seconds=120, per_second=40, seed=seed) == WORSE for seed in range(runs)
    )
    assert worse / runs <= 0.01 + 2 * math.sqrt(0.01 / runs)  # alpha, and the simulation's own error


def test_a_version_five_times_worse_is_found_and_a_broken_one_within_a_handful_of_requests() -> None:
    found = sum(simulate(0.05, 0.01, share=0.25, seconds=120, per_second=40, seed=s) == WORSE for s in range(50))
    assert found >= 48
    # every answer fails: a handful of the new slot's requests decide it
    for n in range(1, 20):
        if compare_events(n, n, 0, 20 * n, alpha=0.01, effect=2.0).worse:
            break
    assert n <= 5


def test_not_worse_once_the_effect_is_ruled_out() -> None:
    verdict = compare_events(200, 100_000, 600, 300_000, alpha=0.01, effect=2.0)
    assert verdict.verdict == NOT_WORSE and verdict.ratio[1] < 2
    small = compare_events(0, 2_000, 1, 6_000, alpha=0.01, effect=2.0, absolute=0.01)
    assert small.verdict == NOT_WORSE  # too few errors for a ratio, but surely under the old rate + 1 point
    looking = compare_events(1, 50, 3, 150, alpha=0.01, effect=2.0)
    assert looking.verdict == LOOKING


def test_the_watch_compares_with_the_old_record_at_alpha() -> None:
    rng = np.random.default_rng(11)
    runs, worse = 200, 0
    for _ in range(runs):
        old_n = 3000
        old_x = rng.binomial(old_n, 0.02)
        n = x = 0
        for _ in range(60):
            a = rng.poisson(20)
            n, x = n + a, x + rng.binomial(a, 0.02)
            if compare_to_record(x, n, old_x, old_n, alpha=0.01, effect=2.0, interval=False).worse:
                worse += 1
                break
    assert worse / runs <= 0.01 + 2 * math.sqrt(0.01 / runs)
    assert compare_to_record(30, 200, 60, 3000, alpha=0.01, effect=2.0).worse  # 15% against 2%


@pytest.mark.parametrize(("old", "new"), [(0.01, 0.02), (0.0, 0.01), (0.02, 0.1)])
def test_the_promised_time_to_show_a_regression_is_about_what_simulated_canaries_take(old: float, new: float) -> None:
    share, alpha = 0.25, 0.01 / 3
    promised = requests_to_show(old, new, alpha=alpha, effect=2.0, share=share)
    assert promised is not None
    rng = np.random.default_rng(5)
    taken = []
    for _ in range(200):
        x = y = n_new = n_old = 0
        while not compare_events(x, n_new, y, n_old, alpha=alpha, effect=2.0, interval=False).worse:
            a = rng.binomial(50, share)  # of the next 50 requests, those the router sent the new slot
            b = 50 - a
            n_new, n_old = n_new + a, n_old + b
            x, y = x + rng.binomial(a, new), y + rng.binomial(b, old)
            assert n_new < 20 * promised, "never found"
        taken.append(n_new)
    median = float(np.median(taken))
    assert promised / 2 <= median <= promised * 2, (promised, median)
    assert requests_to_show(0.01, 0.01, alpha=alpha, effect=2.0, share=share) is None  # no worse: never


def test_the_watch_cannot_promise_what_a_short_record_cannot_show() -> None:
    alpha = 0.01 / 3
    # 2x a 0.1% rate, against 2,000 requests of record: the record's own uncertainty is wider than that
    assert requests_to_show(0.001, 0.002, alpha=alpha, effect=2.0, record=2_000) is None
    long_record = requests_to_show(0.01, 0.03, alpha=alpha, effect=2.0, record=200_000)
    assert long_record is not None and long_record < 2_000


def test_a_router_that_sends_another_share_than_its_weight_is_reported() -> None:
    assert sample_ratio(250, 750, 0.25, 0.01) is None
    mismatch = sample_ratio(100, 900, 0.25, 0.01)
    assert mismatch is not None and mismatch[1] < 0.25


def test_the_speed_step_judges_paired_timings_not_the_busiest_moment() -> None:
    from controller.run.checks import speed

    rng = np.random.default_rng(5)
    busy = rng.choice([1.0, 5.0], size=40, p=[0.7, 0.3])  # a busy moment slows both requests of a pair
    same = [(0.001 * b * rng.uniform(0.8, 1.25), 0.001 * b * rng.uniform(0.8, 1.25)) for b in busy]
    refused, words = speed(same, 3.0, 0.01)
    assert not refused and "more than 3x slower in 0 of 40 paired requests" in words
    slow = [(c * 5, v) for c, v in same]
    refused, words = speed(slow, 3.0, 0.01)
    assert refused and "by chance: less than 1 time in 100" in words


def slow_share_found(share: float, *, stall: bool, seed: int, corrected: bool, seconds: int = 10) -> bool:
    """A canary step of ``seconds``, ~60 of the new slot's requests a second, each past the ceiling with
    ``share``; with ``stall``, the new slot's process stalls for one second of it and every request in
    that second is slow. Whether the latency test, looked at every second, ever says WORSE (at the
    third of alpha it gets)."""
    rng = np.random.default_rng(seed)
    stalled = int(rng.integers(0, seconds)) if stall else -1
    blocks: list[tuple[float, float]] = []
    for second in range(seconds):
        n = float(rng.poisson(60))
        blocks.append((n if second == stalled else float(rng.binomial(int(n), share)), n))
        x, total = sum(b[0] for b in blocks), sum(b[1] for b in blocks)
        burst = overdispersion(blocks) if corrected else 1.0
        if burst is not None and compare_to_share(x / burst, total / burst, 0.05, alpha=0.01 / 3).verdict == WORSE:
            return True
    return False


def test_requests_slowed_together_by_a_stall_count_as_fewer_and_do_not_roll_back_a_healthy_version() -> None:
    runs = 200
    # a healthy version (3% past the ceiling) whose process stalled for one second of a ten-second step
    naive = sum(slow_share_found(0.03, stall=True, seed=s, corrected=False) for s in range(runs))
    corrected = sum(slow_share_found(0.03, stall=True, seed=s, corrected=True) for s in range(runs))
    assert naive / runs >= 0.5 and corrected / runs <= 0.02, (naive, corrected)
    # independent requests at the boundary itself, for five minutes: the correction keeps the test within alpha
    at_line = sum(slow_share_found(0.05, stall=False, seed=s, corrected=True, seconds=300) for s in range(runs))
    assert at_line / runs <= 0.01 + 2 * math.sqrt(0.01 / runs)
    # a version really slower (a fifth of its requests past the ceiling, every second) is still found,
    # as soon as without the correction when nothing stalls, and within half a minute when something does
    assert all(slow_share_found(0.2, stall=False, seed=s, corrected=True) for s in range(50))
    assert all(slow_share_found(0.2, stall=True, seed=s, corrected=True, seconds=30) for s in range(50))


def test_overdispersion_is_one_for_independent_requests_and_large_for_a_burst() -> None:
    rng = np.random.default_rng(3)
    steady = [(float(rng.binomial(20, 0.1)), 20.0) for _ in range(200)]
    assert 0.8 <= (overdispersion(steady) or 0) <= 1.3
    burst = [(0.0, 20.0)] * 199 + [(20.0, 20.0)]
    assert (overdispersion(burst) or 0) > 10
    assert overdispersion(burst[:4]) is None  # too few looks to tell a burst from a steady rate
