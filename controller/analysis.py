"""The analysis behind a canary step and the watch after a deploy: the new slot's live ``/predict``
traffic, read from its Prometheus metrics, against the old slot's.

Three signals, each with its threshold in the settings (``SWITCHYARD_ANALYSIS_*``):

- errors: the new slot's share of 5xx answers;
- latency: the share of its requests slower than ``analysis_max_p99_ratio`` times the old slot's p99
  plus ``latency_slack_ms`` (both from the latency histograms: a p99 is the upper bound of its
  bucket). A p99 of a few hundred requests is their two or three slowest, so comparing two p99s
  directly rolls healthy versions back on a busy machine; if both slots are alike, about 1% of the
  new slot's requests are slower than the old p99 and far fewer than twice as slow, so more than
  ``analysis_max_slow_share`` (5%) of them is a real slowdown, and reads as "its p95 is past twice
  the old p99". The slack is there because each slot is pinned to its own core, which it shares
  with whatever else the machine runs: on two busy cores a healthy new slot once had 43% of its
  first 50 requests past twice the old slot's 2 ms. Set it lower for a model whose every
  millisecond counts;
- predictions: the total variation distance between the two slots' predicted-label distributions, so
  that a model that suddenly answers one class for everything is caught although every request
  "succeeds".

Nothing is decided on a handful of requests: the 5xx rate needs ``analysis_min_requests`` of the new
slot's requests, the latency and label signals (a p99 and a distribution are noisier)
``analysis_min_samples`` on both sides, and a canary step passes only once all three could be judged.
Shadow copies (``traffic="shadow"``) never count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

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
    """The share of requests in ``sample`` slower than the first bucket bound at or past ``seconds``."""
    total = sample.buckets[-1][1] if sample.buckets else 0.0
    if total <= 0:
        return 0.0
    within = next((count for le, count in sample.buckets if le >= seconds), total)
    return (total - within) / total


def p99(sample: Sample) -> float | None:
    """The upper bound of the bucket that holds the 99th percentile, in seconds (inf above the last)."""
    total = sample.buckets[-1][1] if sample.buckets else 0.0
    if total <= 0:
        return None
    for le, count in sample.buckets:
        if count >= 0.99 * total:
            return le
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
    breach: str | None  # the signal that rolls back, with its figures
    enough: bool  # the new slot had enough requests for a verdict
    summary: str


def _ms(seconds: float) -> str:
    return "over the last bucket" if math.isinf(seconds) else f"<= {seconds * 1000:g} ms"


def judge(new: Sample, old: Sample | None, settings: ControllerSettings) -> Verdict:
    minimum, samples = settings.analysis_min_requests, settings.analysis_min_samples
    if new.requests < minimum:
        return Verdict(None, False, f"{new.requests:.0f} request(s) so far, {samples} needed for a verdict")
    rate = new.errors / new.requests
    if rate > settings.analysis_max_error_rate:
        return Verdict(
            f"5xx rate {rate:.1%} over {new.requests:.0f} requests (limit {settings.analysis_max_error_rate:.0%})",
            True,
            "",
        )
    notes = [f"{new.requests:.0f} requests, 5xx {rate:.1%}"]
    if new.requests < samples:
        return Verdict(None, False, f"{new.requests:.0f} request(s) so far, {samples} needed for a verdict")
    new99 = p99(new)
    old99 = p99(old) if old is not None and old.requests >= samples else None
    if new99 is not None and old99 is not None:
        ratio, slack = settings.analysis_max_p99_ratio, settings.latency_slack_ms
        slow = slower_than(new, ratio * old99 + slack / 1000)
        if slow > settings.analysis_max_slow_share:
            return Verdict(
                f"latency: {slow:.0%} of its requests took over {ratio:g}x the previous version's p99 "
                f"+ {slack:g} ms ({_ms(old99)}; its own p99 {_ms(new99)}; "
                f"limit {settings.analysis_max_slow_share:.0%})",
                True,
                "",
            )
        notes.append(f"p99 {_ms(new99)} vs {_ms(old99)}")
    moved = shift(new.labels, old.labels) if old is not None and sum(old.labels.values()) >= samples else None
    if moved is not None:
        if moved > settings.analysis_max_label_shift:
            top = max(new.labels, key=lambda k: new.labels[k])
            share_new = new.labels[top] / sum(new.labels.values())
            share_old = old.labels.get(top, 0.0) / sum(old.labels.values()) if old else 0.0
            return Verdict(
                f"predicted labels moved by {moved:.2f} (total variation; limit "
                f"{settings.analysis_max_label_shift:g}): {top} {share_old:.0%} -> {share_new:.0%}",
                True,
                "",
            )
        notes.append(f"label shift {moved:.2f}")
    return Verdict(None, True, ", ".join(notes))
