"""The evidence of shadow traffic: what the staged candidate did with copies of today's live requests,
read from the paired records (:mod:`service.shadow`), and the rules a promote holds it to.

Agreement and class shares count rows (a request may hold several instances); latencies are the
in-service times of both instances for the same requests; errors count requests the candidate did
not answer with a 200 (a status, a timeout, or no connection at all).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from artifact.shadow import Record, parse_line
from controller.core import stats
from controller.settings import ControllerSettings


@dataclass(frozen=True)
class Evidence:
    requests: int = 0  # copies sent (answered or not)
    compared: int = 0  # copies the candidate answered
    errors: Counter[str] = field(default_factory=Counter)
    dropped: int = 0  # copies not sent: the queue to the candidate was full
    rows: int = 0
    agreed: int = 0
    since: float | None = None
    until: float | None = None
    live_labels: Counter[str] = field(default_factory=Counter)
    cand_labels: Counter[str] = field(default_factory=Counter)
    live_ms: tuple[float, ...] = ()
    cand_ms: tuple[float, ...] = ()
    examples: tuple[Record, ...] = ()

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.rows if self.rows else None

    @property
    def span(self) -> float:
        """Seconds from the first copy to the last."""
        return (self.until or 0.0) - (self.since or 0.0)

    @property
    def error_rate(self) -> float | None:
        return self.error_count / self.requests if self.requests else None

    def shares(self) -> list[tuple[str, float, float]]:
        """(label, live share, candidate share) over compared rows, the largest shift first."""
        live_total, cand_total = sum(self.live_labels.values()), sum(self.cand_labels.values())
        labels = set(self.live_labels) | set(self.cand_labels)
        rows = [
            (label, self.live_labels[label] / live_total, self.cand_labels[label] / cand_total)
            for label in labels
            if live_total and cand_total
        ]
        return sorted(rows, key=lambda row: (-abs(row[2] - row[1]), row[0]))

    def latency(self) -> dict[str, float | None]:
        return {
            "live_p50_ms": percentile(self.live_ms, 50),
            "live_p99_ms": percentile(self.live_ms, 99),
            "candidate_p50_ms": percentile(self.cand_ms, 50),
            "candidate_p99_ms": percentile(self.cand_ms, 99),
        }


def percentile(values: tuple[float, ...], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def fold(lines: list[bytes], max_examples: int = 20) -> Evidence:
    """The evidence in the lines of one candidate's records file (:func:`controller.drivers.shadow.evidence`
    reads them)."""
    requests = compared = dropped = rows = agreed = 0
    errors: Counter[str] = Counter()
    live_labels: Counter[str] = Counter()
    cand_labels: Counter[str] = Counter()
    live_ms: list[float] = []
    cand_ms: list[float] = []
    examples: list[Record] = []
    since = until = None
    for line in lines:
        record = parse_line(line)
        if record is None:
            continue  # a line cut short by a killed instance, or not a record
        if isinstance(record, int):
            dropped += record
            continue
        requests += 1
        since = record.t if since is None else min(since, record.t)
        until = record.t if until is None else max(until, record.t)
        if record.error is not None or record.cand is None or record.cand_top is None:
            errors[record.error or "no answer"] += 1
            continue
        compared += 1
        rows += len(record.live)
        agreed += sum(1 for a, b in zip(record.live, record.cand, strict=False) if a == b)
        live_labels.update(record.live)
        cand_labels.update(record.cand)
        live_ms.append(record.live_ms)
        cand_ms.append(record.cand_ms or 0.0)
        if record.input is not None and len(examples) < max_examples:
            examples.append(record)
    return Evidence(
        requests=requests,
        compared=compared,
        errors=errors,
        dropped=dropped,
        rows=rows,
        agreed=agreed,
        since=since,
        until=until,
        live_labels=live_labels,
        cand_labels=cand_labels,
        live_ms=tuple(live_ms),
        cand_ms=tuple(cand_ms),
        examples=tuple(examples),
    )


def agreement_interval(evidence: Evidence, alpha: float) -> tuple[float, float] | None:
    """A (1 - alpha) confidence sequence for the candidate's agreement with live, valid however often
    the evidence is read (rows counted as independent draws)."""
    if not evidence.rows:
        return None
    return stats.proportion_cs(float(evidence.agreed), float(evidence.rows), alpha)


def judge(evidence: Evidence, settings: ControllerSettings) -> str | None:
    """The first rule the evidence breaks, with its figures; None if it meets them all.

    The agreement and latency rules refuse only what the evidence shows surely (each at half of
    ``analysis_alpha``, however often `evidence` or the console reads it): a candidate as good as the
    floor is refused by noise in at most that share of promotes."""
    if evidence.error_count > settings.shadow_max_errors:
        worst = ", ".join(f"{kind} x{n}" for kind, n in evidence.errors.most_common(3))
        return (
            f"the candidate failed {evidence.error_count} of {evidence.requests} request(s) ({worst}); "
            f"at most {settings.shadow_max_errors} allowed (--shadow-max-errors)"
        )
    if evidence.compared < settings.shadow_min_requests:
        return (
            f"{evidence.compared} request(s) compared, the minimum is {settings.shadow_min_requests} "
            "(--shadow-min-requests): let live traffic run longer"
        )
    alpha = settings.analysis_alpha / 2
    interval = agreement_interval(evidence, alpha)
    if interval is None:
        return None  # nothing compared (every copy failed and failures are allowed, or no minimum asked for)
    if interval[1] < settings.shadow_min_agreement:
        return (
            f"agreement with live is {evidence.agreement:.1%} over {evidence.rows} row(s) (surely between "
            f"{interval[0]:.1%} and {interval[1]:.1%}), below the floor of {settings.shadow_min_agreement:.1%} "
            f"(--shadow-min-agreement; by chance: {chance(alpha)})"
        )
    slow = slower(evidence, settings, alpha)
    if slow is not None and slow.worse:
        latency = evidence.latency()
        return (
            f"the candidate is slower: {slow.new_rate or 0:.1%} of its answers took over "
            f"{settings.shadow_max_p99_ratio:g}x live's p99 ({latency['live_p99_ms']:.1f} ms) on the same requests, "
            f"where 1% would be live's own tail; its p99 is {latency['candidate_p99_ms']:.1f} ms "
            f"(--shadow-max-p99-ratio; by chance: {chance(alpha)})"
        )
    return None


def slower(evidence: Evidence, settings: ControllerSettings, alpha: float) -> stats.Verdict | None:
    """The candidate's share of answers past ``shadow_max_p99_ratio`` times live's p99 over the same
    requests, tested against the 1% a candidate whose p99 is within that ratio may have."""
    live99 = percentile(evidence.live_ms, 99)
    if live99 is None:
        return None
    ceiling = settings.shadow_max_p99_ratio * live99
    past = sum(1 for ms in evidence.cand_ms if ms > ceiling)
    return stats.compare_to_share(past, len(evidence.cand_ms), 0.01, alpha=alpha)


def chance(alpha: float) -> str:
    return f"less than 1 time in {round(1 / alpha):,}"


def summary(evidence: Evidence) -> str:
    """One line: for `status` and for the promote that passes the rules."""
    if not evidence.requests:
        return "no request compared yet"
    agreement = evidence.agreement
    agree = f"agreement {agreement:.1%}" if agreement is not None else "no answer to compare"
    return (
        f"{evidence.compared} request(s) compared over {duration(evidence.span)}, {agree}, "
        f"candidate errors {evidence.error_count}"
    )


def duration(seconds: float, gap: str = " ") -> str:
    """``42 s``, ``17 min``, ``3.5 h``; with ``gap=""`` the compact ``42s``, ``17m``, ``3.5h`` of tables."""
    if seconds < 120:
        return f"{seconds:.0f}{gap}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}{gap}{'min' if gap else 'm'}"
    return f"{seconds / 3600:.1f}{gap}h"


def as_json(evidence: Evidence, settings: ControllerSettings) -> dict[str, Any]:
    interval = agreement_interval(evidence, settings.analysis_alpha / 2)
    return {
        "requests": evidence.requests,
        "compared": evidence.compared,
        "since": evidence.since,
        "until": evidence.until,
        "rows": evidence.rows,
        "agreement": evidence.agreement,
        "agreement_interval": list(interval) if interval else None,
        "errors": evidence.error_count,
        "error_rate": evidence.error_rate,
        "error_kinds": dict(evidence.errors),
        "dropped": evidence.dropped,
        "shares": [{"label": label, "live": live, "candidate": cand} for label, live, cand in evidence.shares()],
        "latency": evidence.latency(),
        "examples": [
            {
                "request_id": ex.id,
                "input": ex.input,
                "live": ex.live,
                "live_score": ex.live_top,
                "candidate": ex.cand,
                "candidate_score": ex.cand_top,
            }
            for ex in evidence.examples
        ],
    }


def render(evidence: Evidence, header: str, settings: ControllerSettings, shares: int = 8) -> list[str]:
    """The text `release evidence` prints."""
    lines = [header]
    if not evidence.requests:
        return [*lines, "  no request compared yet: send traffic to the router, then look again"]
    lines.append(f"  compared:   {summary(evidence)}")
    interval = agreement_interval(evidence, settings.analysis_alpha / 2)
    if interval is not None:
        lines.append(
            f"  agreement:  surely between {interval[0]:.1%} and {interval[1]:.1%} "
            f"(a {1 - settings.analysis_alpha / 2:.1%} confidence sequence, valid however often you look)"
        )
    if evidence.dropped:
        lines.append(
            f"  dropped:    {evidence.dropped} copies (the candidate could not keep up; live was not affected)"
        )
    if evidence.errors:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in evidence.errors.most_common(5))
        lines.append(f"  errors:     {evidence.error_count} ({(evidence.error_rate or 0):.1%}): {kinds}")
    latency = evidence.latency()
    if latency["live_p50_ms"] is not None:
        theirs = f"candidate p50 {latency['candidate_p50_ms']:.2f} ms, p99 {latency['candidate_p99_ms']:.2f} ms"
        ours = f"live p50 {latency['live_p50_ms']:.2f} ms, p99 {latency['live_p99_ms']:.2f} ms"
        lines.append(f"  latency:    {theirs} | {ours} (in-service time, same requests)")
    moved = evidence.shares()[:shares]
    if moved:
        lines.append("  class shares, live -> candidate, largest shift first:")
        width = max(len(label) for label, _, _ in moved)
        for label, live, cand in moved:
            lines.append(f"    {label:<{width}}  {live:6.1%} -> {cand:6.1%}  ({(cand - live) * 100:+.1f} points)")
    if evidence.examples:
        lines.append("  disagreements (first ones):")
        for ex in evidence.examples:
            pairs = zip(ex.live, ex.live_top, ex.cand or [], ex.cand_top or [], strict=False)
            for said, said_score, other, other_score in pairs:
                if said != other:
                    lines.append(f"    live {said} ({said_score:.2f}) / candidate {other} ({other_score:.2f})")
            lines.append(f"      {ex.input}")
    verdict = judge(evidence, settings)
    lines.append(f"  gate at promote: {'passes' if verdict is None else 'refuses: ' + verdict}")
    return lines
