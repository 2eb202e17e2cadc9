"""Sequential statistics for the decisions Switchyard takes by itself: valid however often it looks.

The agent looks at a canary or a watch four times a second for minutes. A fixed line on a count,
looked at again and again, is crossed by noise sooner or later; these tests are instead built on
nonnegative (super)martingales, so by Ville's inequality the chance that one *ever* says "worse"
about a version that is no worse is at most ``alpha``, whenever and however often it is read
(Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Annals of Statistics 2021; Lindon, Sanden and Shirikian, "Rapid regression detection in
software deployments through sequential testing", KDD 2022).

Every comparison is the new slot against the old one. Three verdicts: :data:`WORSE` (with error
rate at most ``alpha`` for a version that is no worse), :data:`NOT_WORSE` (the effect that matters
is ruled out) and :data:`LOOKING`.

**Events in two arms** (5xx answers; requests slower than the old slot's p95): while both slots take
traffic at the same time (a canary step), an event falls in the new slot with probability
``pi0 = n_new / (n_new + n_old)`` if both have the same event rate, and with a higher one if the new
slot's rate is ``ratio`` times the old's: ``pi = ratio*pi0 / (ratio*pi0 + 1 - pi0)``. Conditioned on
the events, that is one Bernoulli stream whatever the base rate, tested with a Beta mixture over
the alternatives at least ``effect`` times worse (:func:`compare_events`).

**Against a record** (the watch: the previous slot takes no traffic after the deploy): the new
slot's rate is tested against the upper end of a confidence interval of the old slot's rate, half
of ``alpha`` each (:func:`compare_to_record`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.special import betainc, betaln

WORSE = "worse"
NOT_WORSE = "not worse"
LOOKING = "keep looking"


@dataclass(frozen=True)
class Verdict:
    verdict: str  # WORSE | NOT_WORSE | LOOKING
    new_rate: float | None  # the new slot's event rate, as observed
    old_rate: float | None
    ratio: tuple[float, float]  # a confidence sequence for new rate / old rate (0, inf: no idea yet)
    events: tuple[float, float]  # (new, old) events counted
    requests: tuple[float, float]  # (new, old) requests counted

    @property
    def worse(self) -> bool:
        return self.verdict == WORSE


def log_mixture(x: float, n: float, p0: float, a: float = 1.0, b: float = 1.0, lower: float = 0.0) -> float:
    """log of the likelihood ratio of ``x`` successes in ``n`` Bernoulli trials, a Beta(a, b) mixture
    of success probabilities above ``lower`` against the single probability ``p0``. With ``lower``
    at or above ``p0`` it is a supermartingale for every probability at or below ``p0``."""
    if n <= 0:
        return 0.0
    p0 = min(max(p0, 1e-12), 1 - 1e-12)
    mixture = betaln(a + x, b + n - x) - betaln(a, b)
    if lower > 0:
        tail_post = 1.0 - float(betainc(a + x, b + n - x, lower))
        tail_prior = 1.0 - float(betainc(a, b, lower))
        if tail_post <= 0 or tail_prior <= 0:
            return math.inf if x / n > lower else -math.inf
        mixture += math.log(tail_post) - math.log(tail_prior)
    return mixture - x * math.log(p0) - (n - x) * math.log1p(-p0)


@functools.lru_cache(maxsize=4096)  # a watch's old record does not change between looks
def proportion_cs(x: float, n: float, alpha: float, a: float = 1.0, b: float = 1.0) -> tuple[float, float]:
    """A (1 - alpha) confidence sequence for a Bernoulli success probability after ``x`` of ``n``:
    the probabilities the Beta(a, b) mixture martingale has not rejected."""
    if n <= 0:
        return 0.0, 1.0
    bound = math.log(1 / alpha)
    centre = x / n

    def rejected(p: float) -> bool:
        return log_mixture(x, n, p, a, b) >= bound

    def search(inside: float, outside: float) -> float:
        for _ in range(40):  # to about 1e-12
            middle = (inside + outside) / 2
            inside, outside = (inside, middle) if rejected(middle) else (middle, outside)
        return inside

    lo = 0.0 if not rejected(1e-12) else search(centre, 1e-12)
    hi = 1.0 if not rejected(1 - 1e-12) else search(centre, 1 - 1e-12)
    return lo, hi


def _share_to_ratio(pi: float, pi0: float) -> float:
    if pi >= 1:
        return math.inf
    return pi * (1 - pi0) / (pi0 * (1 - pi)) if pi > 0 else 0.0


def _verdict(
    verdict: str, x: float, n_new: float, y: float, n_old: float, ratio: tuple[float, float] = (0.0, math.inf)
) -> Verdict:
    return Verdict(verdict, x / n_new if n_new else None, y / n_old if n_old else None, ratio, (x, y), (n_new, n_old))


def _ruled_out_above(x: float, n: float, p: float, alpha: float) -> bool:
    """Whether ``p`` lies above the (1 - alpha) confidence sequence after ``x`` of ``n``: one
    evaluation, where the interval itself takes a search."""
    return n > 0 and x / n < p and log_mixture(x, n, p) >= math.log(1 / alpha)


def compare_events(
    new_events: float,
    new_requests: float,
    old_events: float,
    old_requests: float,
    *,
    alpha: float,
    effect: float,
    absolute: float = 0.0,
    interval: bool = True,
) -> Verdict:
    """New against old while both take traffic: WORSE once the events fall in the new slot more often
    than its share of requests explains (tuned to a rate ``effect`` times the old one); NOT_WORSE once
    a rate ``effect`` times the old is ruled out, or the new rate is surely below the old + ``absolute``.
    ``interval``: also compute the confidence sequence of the ratio (for words; verdicts need not)."""
    x, n_new, y, n_old = (max(v, 0.0) for v in (new_events, new_requests, old_events, old_requests))
    if n_new <= 0 or n_old <= 0:
        return _verdict(LOOKING, x, n_new, y, n_old)
    pi0 = n_new / (n_new + n_old)
    pi1 = effect * pi0 / (effect * pi0 + 1 - pi0)
    m = x + y
    ratio = (0.0, math.inf)
    if interval:
        lo, hi = proportion_cs(x, m, alpha)
        ratio = (_share_to_ratio(lo, pi0), _share_to_ratio(hi, pi0))
    if log_mixture(x, m, pi0, lower=pi1) >= math.log(1 / alpha):
        return _verdict(WORSE, x, n_new, y, n_old, ratio)
    ruled_out = _ruled_out_above(x, m, pi1, alpha) or (
        absolute > 0 and _ruled_out_above(x, n_new, y / n_old + absolute, alpha)
    )
    return _verdict(NOT_WORSE if ruled_out else LOOKING, x, n_new, y, n_old, ratio)


def compare_to_record(
    new_events: float,
    new_requests: float,
    old_events: float,
    old_requests: float,
    *,
    alpha: float,
    effect: float,
    absolute: float = 0.0,
    interval: bool = True,
) -> Verdict:
    """New against the old slot's record, which no longer grows (the watch after a deploy): the old
    rate's upper confidence bound (alpha/2) is the null; WORSE once the new rate is surely above it
    (alpha/2, a mixture over rates at least ``effect`` times it)."""
    x, n_new, y, n_old = (max(v, 0.0) for v in (new_events, new_requests, old_events, old_requests))
    if n_new <= 0 or n_old <= 0:
        return _verdict(LOOKING, x, n_new, y, n_old)
    old_lo, old_hi = proportion_cs(y, n_old, alpha / 2)
    null = max(old_hi, 1e-9)
    ratio = (0.0, math.inf)
    if interval:
        new_lo, new_hi = proportion_cs(x, n_new, alpha / 2)
        ratio = (new_lo / old_hi if old_hi else math.inf, new_hi / old_lo if old_lo else math.inf)
    if log_mixture(x, n_new, null, lower=min(effect * null, 1 - 1e-9)) >= math.log(2 / alpha):
        return _verdict(WORSE, x, n_new, y, n_old, ratio)
    ruled_out = (old_lo > 0 and _ruled_out_above(x, n_new, effect * old_lo, alpha / 2)) or (
        absolute > 0 and _ruled_out_above(x, n_new, old_lo + absolute, alpha / 2)
    )
    return _verdict(NOT_WORSE if ruled_out else LOOKING, x, n_new, y, n_old, ratio)


def compare_to_share(events: float, requests: float, share: float, *, alpha: float, effect: float = 2.0) -> Verdict:
    """Events in one stream against a share they may reach at most (5% of requests past a p95):
    WORSE once the share is surely above it (a mixture over shares at least ``effect`` times it),
    NOT_WORSE once a share above it is ruled out."""
    x, n = max(events, 0.0), max(requests, 0.0)
    if n <= 0:
        return _verdict(LOOKING, x, n, share, 1.0)
    if log_mixture(x, n, share, lower=min(effect * share, 1 - 1e-9)) >= math.log(1 / alpha):
        return _verdict(WORSE, x, n, share, 1.0)
    return _verdict(NOT_WORSE if _ruled_out_above(x, n, effect * share, alpha) else LOOKING, x, n, share, 1.0)


def overdispersion(blocks: Sequence[tuple[float, float]], min_blocks: int = 5) -> float | None:
    """How much more an event's share varies between blocks of time than independent requests would
    let it (Pearson's chi-square over its degrees of freedom, never under 1): the quasi-binomial factor
    by which counts are divided when events come in bursts. ``blocks``: (events, requests) each. None
    while fewer than ``min_blocks`` blocks have requests: too few to tell a burst from a steady rate."""
    used = [(e, n) for e, n in blocks if n > 0]
    events, total = sum(e for e, _ in used), sum(n for _, n in used)
    if len(used) < min_blocks:
        return None
    if not 0 < events < total:
        return 1.0
    p = events / total
    chi2 = sum((e - n * p) ** 2 / (n * p * (1 - p)) for e, n in used)
    return max(1.0, chi2 / (len(used) - 1))


def sample_ratio(new_requests: float, old_requests: float, weight: float, alpha: float) -> tuple[float, float] | None:
    """The share of requests the new slot really got, as a confidence sequence, if it is not the
    ``weight`` (a fraction) the router was given: the comparison would then be biased. None if it is."""
    total = new_requests + old_requests
    if total <= 0:
        return None
    lo, hi = proportion_cs(new_requests, total, alpha)
    return None if lo <= weight <= hi else (lo, hi)


def sign_test(successes: int, trials: int) -> float:
    """One-sided p-value: the chance of at least ``successes`` in ``trials`` fair coin flips."""
    if trials <= 0:
        return 1.0
    return float(sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2**trials)


def requests_to_show(
    old_rate: float,
    new_rate: float,
    *,
    alpha: float,
    effect: float,
    share: float | None = None,
    record: float = 0.0,
    limit: float = 1e7,
) -> float | None:
    """About how many requests of the new slot the test needs to say WORSE of a version whose rate is
    really ``new_rate`` (the old one's being ``old_rate``), with every count at its expected value: for
    the words "a 2x error rate would show within about 40 s". ``share``: the new slot's share of
    requests in a canary step (:func:`compare_events`); None for the watch, against an old record of
    ``record`` requests (:func:`compare_to_record`). None if it would not show within ``limit``."""
    if new_rate <= old_rate or not 0 < new_rate < 1:
        return None
    if share is not None:
        if not 0 < share < 1:
            return None
        pi1 = effect * share / (effect * share + 1 - share)

        def shows(n: float) -> bool:
            x, y = new_rate * n, old_rate * n * (1 - share) / share
            return log_mixture(x, x + y, share, lower=pi1) >= math.log(1 / alpha)

    else:
        if record <= 0:
            return None
        null = max(proportion_cs(old_rate * record, record, alpha / 2)[1], 1e-9)
        if new_rate <= null:
            return None
        lower = min(effect * null, 1 - 1e-9)

        def shows(n: float) -> bool:
            return log_mixture(new_rate * n, n, null, lower=lower) >= math.log(2 / alpha)

    high = 1.0
    while not shows(high):
        high *= 2
        if high > limit:
            return None
    low = high / 2
    while high - low > max(1.0, 0.02 * high):
        middle = (low + high) / 2
        low, high = (low, middle) if shows(middle) else (middle, high)
    return high
