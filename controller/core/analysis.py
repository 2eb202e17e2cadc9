"""The analysis behind a canary step and the watch after a deploy: the new slot's live ``/predict``
traffic, read from its Prometheus metrics, against the old slot's, with the sequential tests of
:mod:`controller.core.stats` (valid however often the agent looks).

Three signals, each a comparison of the new slot with the old one, never an absolute line:

- **errors**: 5xx answers. "Worse" is tuned to ``analysis_error_effect`` (2) times the old rate; a
  version whose every answer fails is found within a handful of requests;
- **latency**: the new slot's p95 against ``analysis_latency_effect`` (2) times the old slot's
  (``analysis_latency_quantile``, as the upper bound of a histogram bucket): "worse" once more than
  5% of its requests surely took longer than that. Being relative, it needs no slack for a busy
  machine: during a canary both slots are measured in the same seconds on the same cores. Slow
  requests that come in bursts (a stall) count as fewer independent ones: the counts are divided by
  their overdispersion between the seconds of the window (:func:`controller.core.stats.overdispersion`),
  and a step cannot pass before five seconds have shown it. While the
  new slot takes under half the traffic, its reference is the old slot's p99 (a lightly loaded
  process waits longer for a busy machine's cores than a busy one);
- **predictions**: each label's share. "Worse" is a label predicted significantly more often (tuned
  to ``analysis_label_effect``, 1.2x) while the label distributions differ by at least
  ``analysis_max_label_shift`` (0.25 total variation: a new model is expected to answer somewhat
  differently; one that answers one class for everything moves about 0.75).

The false-alarm rate of a whole canary step or watch is at most ``analysis_alpha`` (1%), split evenly
across the three signals (the labels' share split again across the labels). During a canary both
slots take traffic at the same time and are compared directly; during the watch the previous slot
takes none, and the new slot is compared with its record (:func:`controller.core.stats.compare_to_record`).
A canary step passes once it has lasted its time, the new slot has ``analysis_min_samples``
requests, and no signal says worse. Shadow copies (``traffic="shadow"``) never count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from controller.core import stats
from controller.core.evidence import chance, duration
from controller.settings import ControllerSettings


@dataclass(frozen=True)
class Sample:
    """Counters of one instance's live ``/predict`` traffic (cumulative, or a difference of two)."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound in seconds, cumulative count)
    labels: dict[str, float] = field(default_factory=dict)

    def minus(self, earlier: Sample) -> Sample:
        before = dict(earlier.buckets)
        return Sample(
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            buckets=tuple((le, count - before.get(le, 0.0)) for le, count in self.buckets),
            labels={k: v - earlier.labels.get(k, 0.0) for k, v in self.labels.items()},
        )


def parse(text: str) -> Sample:
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    labels: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for metric in family.samples:
            tags = metric.labels
            if tags.get("traffic", "live") != "live":
                continue
            if metric.name == "switchyard_requests_total" and tags.get("route") == "/predict":
                requests += metric.value
                if tags.get("status", "").startswith("5"):
                    errors += metric.value
            elif metric.name == "switchyard_request_duration_seconds_bucket" and tags.get("route") == "/predict":
                le = float(tags["le"])
                buckets[le] = buckets.get(le, 0.0) + metric.value
            elif metric.name == "switchyard_predictions_total":
                labels[tags["label"]] = labels.get(tags["label"], 0.0) + metric.value
    return Sample(requests, errors, tuple(sorted(buckets.items())), labels)


def slower_than(sample: Sample, seconds: float) -> float:
    """About how many requests in ``sample`` took longer than ``seconds``: counted spread evenly
    within the bucket that holds ``seconds``, as Prometheus's ``histogram_quantile`` reads a bucket.
    (Reading whole buckets rounded both the old quantile and the ceiling up: a 2x test read 3x.)"""
    total = sample.buckets[-1][1] if sample.buckets else 0.0
    lower, below = 0.0, 0.0
    for le, count in sample.buckets:
        if le >= seconds:
            if math.isinf(le):
                return total - below
            within = below + (count - below) * (seconds - lower) / (le - lower)
            return total - within
        lower, below = le, count
    return 0.0


def quantile(sample: Sample, q: float) -> float | None:
    """The ``q`` quantile in seconds, spread evenly within its bucket as Prometheus reads one (inf
    if it lies above the last finite bound)."""
    total = sample.buckets[-1][1] if sample.buckets else 0.0
    if total <= 0:
        return None
    lower, below = 0.0, 0.0
    for le, count in sample.buckets:
        if count >= q * total:
            if math.isinf(le):
                return math.inf
            return lower + (le - lower) * (q * total - below) / (count - below) if count > below else le
        lower, below = le, count
    return math.inf


def shift(new: dict[str, float], old: dict[str, float]) -> float | None:
    """Total variation distance between two label distributions (0: the same, 1: disjoint)."""
    new_total, old_total = sum(new.values()), sum(old.values())
    if new_total <= 0 or old_total <= 0:
        return None
    labels = set(new) | set(old)
    return sum(abs(new.get(k, 0.0) / new_total - old.get(k, 0.0) / old_total) for k in labels) / 2


@dataclass(frozen=True)
class Verdict:
    breach: str | None  # the signal that rolls back, in words with its figures
    enough: bool  # a canary step may pass: enough requests, and no signal says worse
    summary: str
    mismatch: str | None = None  # the router's real share differs from its weight: a biased comparison


def _ms(seconds: float) -> str:
    return "over the last bucket" if math.isinf(seconds) else f"{seconds * 1000:.3g} ms"


def judge(
    new: Sample,
    old: Sample | None,
    settings: ControllerSettings,
    *,
    concurrent: bool = True,
    weight: float | None = None,
    seconds: float | None = None,
    blocks: tuple[Sample, ...] | None = None,
) -> Verdict:
    """``concurrent``: both slots took traffic in the same window (a canary step); otherwise ``old`` is
    the previous slot's record (the watch). ``weight``: the share the router was told to send (a
    fraction), for the sample-ratio check. ``seconds``: how long the window has lasted, for the words
    on how soon a worse error rate would show at this traffic. ``blocks``: the new slot's requests
    second by second, in which the latency test measures bursts (None: take its requests as
    independent)."""
    if new.requests <= 0 or old is None or old.requests <= 0:
        return Verdict(None, False, f"{new.requests:,.0f} request(s) so far; nothing to compare yet")
    alpha = settings.analysis_alpha / 3
    compare = stats.compare_events if concurrent else stats.compare_to_record
    notes: list[str] = []
    verdicts: list[str] = []

    errors = compare(
        new.errors,
        new.requests,
        old.errors,
        old.requests,
        alpha=alpha,
        effect=settings.analysis_error_effect,
        absolute=settings.analysis_error_absolute,
    )
    if errors.worse:
        return Verdict(
            f"worse on errors: {errors.new_rate or 0:.1%} vs {errors.old_rate or 0:.1%} 5xx over "
            f"{new.requests:,.0f} requests (a difference this large by chance: {chance(alpha)})",
            True,
            "",
        )
    verdicts.append(errors.verdict)
    notes.append(f"5xx {errors.new_rate or 0:.1%} vs {errors.old_rate or 0:.1%} ({errors.verdict})")

    q = settings.analysis_latency_quantile
    unjudged = False  # latency could not be judged yet: a step may not pass before it is
    if concurrent and weight is not None and weight < 0.5:
        # At a small share the new slot sleeps between requests while the old one stays busy; on a
        # machine whose cores are taken, each wake-up waits for the scheduler, so its tail is longer
        # than its model's (measured: a tf-idf canary at 5% beside rules with both cores busy had a
        # p95 of 2-25x the old slot's in 3 s windows, and 0.7-1x at 50%). Its reference there is the
        # old slot's p99: still tight enough for a gross regression at the first step.
        q = max(q, 0.99)
    bound = quantile(old, q)
    if bound is not None and not math.isinf(bound) and new.buckets:
        # No more than 1 - q of the new slot's requests may take longer than effect x the old slot's
        # quantile (a bucket bound, which rounds the quantile up): its quantile is then within effect x.
        ceiling = settings.analysis_latency_effect * bound
        # Requests slowed together (a stall of the process or the machine) are not independent: their
        # counts are divided by how much more the slow share varies from second to second than chance allows.
        measured: float | None = 1.0
        if blocks is not None:
            measured = stats.overdispersion([(slower_than(b, ceiling), b.buckets[-1][1]) for b in blocks if b.buckets])
        unjudged = measured is None  # too few seconds yet to tell a stall from a slower model: latency waits
        burst = math.inf if measured is None else measured
        total = new.buckets[-1][1]
        slow = stats.compare_to_share(slower_than(new, ceiling) / burst, total / burst, 1 - q, alpha=alpha)
        words = (
            f"{slower_than(new, ceiling) / total if total else 0:.0%} of its requests took over "
            f"{settings.analysis_latency_effect:g}x the previous version's p{q * 100:g} ({_ms(bound)})"
        )
        if math.isinf(burst):
            words += ", too few seconds yet to tell a stall from a slower model"
        elif burst >= 2:
            words += f", in bursts (counted as {total / burst:,.0f} independent requests)"
        if slow.worse:
            return Verdict(f"worse on latency: {words} (by chance: {chance(alpha)})", True, "")
        notes.append(f"{words} ({slow.verdict})")
        verdicts.append(slow.verdict)

    moved = shift(new.labels, old.labels)
    new_total, old_total = sum(new.labels.values()), sum(old.labels.values())
    if moved is not None:
        labels = sorted(set(new.labels) | set(old.labels))
        per_label = alpha / max(1, len(labels))
        for label in labels:
            more = compare(
                new.labels.get(label, 0.0),
                new_total,
                old.labels.get(label, 0.0),
                old_total,
                alpha=per_label,
                effect=settings.analysis_label_effect,
                interval=False,
            )
            if more.worse and moved >= settings.analysis_max_label_shift:
                return Verdict(
                    f"worse on predictions: {label} {more.old_rate or 0:.0%} -> {more.new_rate or 0:.0%} of answers "
                    f"(labels moved by {moved:.2f}; by chance: {chance(alpha)})",
                    True,
                    "",
                )
        notes.append(f"label shift {moved:.2f}")

    mismatch = None
    if concurrent and weight is not None and 0 < weight < 1:
        seen = stats.sample_ratio(new.requests, old.requests, weight, settings.analysis_alpha)
        if seen is not None:
            mismatch = (
                f"the router sent the new version {seen[0]:.0%}-{seen[1]:.0%} of requests, not {weight:.0%}: "
                "the comparison may be biased"
            )
    enough = new.requests >= settings.analysis_min_samples and not unjudged
    lead = "not worse" if all(v == stats.NOT_WORSE for v in verdicts) else "no difference found yet"
    words = f"{lead} over {new.requests:,.0f} requests: {'; '.join(notes)}"
    if errors.verdict == stats.LOOKING and seconds:
        words += f". {_would_show(new, old, settings, alpha, concurrent, seconds)}"
    if new.requests < settings.analysis_min_samples:
        words += f". {settings.analysis_min_samples:,} requests needed to pass"
    return Verdict(None, enough, words, mismatch)


def _would_show(
    new: Sample, old: Sample, settings: ControllerSettings, alpha: float, concurrent: bool, seconds: float
) -> str:
    """How soon, at this traffic, the error test would say "worse" of a version with the error rate it
    is tuned to find (or, if that one would not show, of a larger one): the test's power, in words a
    person who waits can use."""
    old_rate = old.errors / old.requests
    effect = settings.analysis_error_effect
    share = new.requests / (new.requests + old.requests) if concurrent else None
    rate = new.requests / seconds
    missed: list[str] = []
    for multiple in (1.0, 2.5, 5.0):
        if old_rate > 0:
            worse = min(multiple * effect * old_rate, 1 - 1e-9)
            what = f"{multiple * effect:g}x error rate ({worse:.1%})"
        else:
            worse = min(multiple * max(settings.analysis_error_absolute, 0.001), 1 - 1e-9)
            what = f"{worse:.1%} error rate"
        needed = stats.requests_to_show(
            old_rate, worse, alpha=alpha, effect=effect, share=share, record=0.0 if concurrent else old.requests
        )
        if needed is not None and needed / rate <= 24 * 3600:
            within = f"within about {duration(max(needed / rate, 1.0))}"
            if not missed:
                return f"At this traffic a {what} would show {within}"
            return f"At this traffic a {' or '.join(missed)} would not show; a {what} would, {within}"
        missed.append(what)
    why = " (the previous version's record is too short)" if not concurrent else ""
    return f"At this traffic not even a {missed[-1]} would show within a day{why}"
