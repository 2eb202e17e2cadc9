"""The checks around a flip, over the seams: waiting for a candidate's readiness (watching it while
it starts), the CD4ML evaluation gate, and waiting for a retired instance to let go of the router's
connections. Each failing check raises :class:`CheckFailed` naming its step.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

from artifact.manifest import Manifest
from controller.core import stats
from controller.core.facts import Instance
from controller.drivers.backends.base import Backend
from controller.drivers.probes import Smoke
from controller.drivers.seams import Clock, Probes
from controller.errors import CheckFailed
from controller.vocabulary import StepName


def reason_in(logs: str) -> str | None:
    """The reason a service gave for exiting: its last "error: ..." line, or its last error log record."""
    for line in reversed(logs.splitlines()):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
        if line.startswith("{") and '"level":"error"' in line.replace(" ", ""):
            try:
                return str(json.loads(line)["message"])
            except (ValueError, KeyError):
                continue
    return None


def wait_ready(
    backend: Backend, probes: Probes, clock: Clock, instance: Instance, manifest: Manifest, timeout: float
) -> str:
    """Poll readiness while watching the instance: an early exit fails at once with its last log lines."""
    started = clock.monotonic()
    last = "no answer yet"
    while clock.monotonic() - started < timeout:
        if not backend.alive(instance.handle):
            code = backend.exit_code(instance.handle)
            how = f" with code {code}" if code is not None else ""
            logs = backend.logs(instance.handle)
            why = reason_in(logs)
            raise CheckFailed(
                StepName.READY, f"the instance exited{how}{': ' + why if why else ''}; its last log lines:\n{logs}"
            )
        problem = probes.readiness(instance, manifest)
        if problem is None:
            return f"ready in {clock.monotonic() - started:.1f}s"
        if "expected" in problem:
            raise CheckFailed(StepName.READY, f"wrong identity: {problem}")
        last = problem
        clock.sleep(0.05)
    raise CheckFailed(
        StepName.READY, f"not ready within {timeout:g}s ({last}); last log lines:\n{backend.logs(instance.handle)}"
    )


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def gate(candidate: Manifest, live: Manifest | None, tolerance: float) -> GateDecision:
    """CD4ML: the candidate's metric must not be worse than the live model's beyond ``tolerance``,
    compared only on evaluation data both were scored on (same data fingerprint)."""
    if live is None:
        return GateDecision(True, "nothing live to compare with")
    grouped, live_grouped = candidate.metrics.get("grouped_by"), live.metrics.get("grouped_by")
    if grouped != live_grouped:
        return GateDecision(
            False,
            f"not comparable: v{candidate.version} is {_evaluated(grouped)} and live v{live.version} is "
            f"{_evaluated(live_grouped)}; a metric on companies the model saw in training flatters it",
        )
    metric = candidate.metric
    pairs: list[tuple[str, float, float]] = []
    for name, fingerprint in candidate.eval_sets.items():
        other = live.eval_sets.get(name)
        if other is not None and other.sha256 == fingerprint.sha256:
            pairs.append((name, candidate.metrics["eval_sets"][name][metric], live.metrics["eval_sets"][name][metric]))
    same_split = (candidate.model_extra or {}).get("config", {}).get("split") == (live.model_extra or {}).get(
        "config", {}
    ).get("split")
    if candidate.dataset.sha256 == live.dataset.sha256 and same_split:
        pairs.append(("held-out split", candidate.metrics["holdout"][metric], live.metrics["holdout"][metric]))
    if not pairs:
        return GateDecision(
            False,
            f"not comparable: v{candidate.version} and live v{live.version} share no evaluation data "
            f"(datasets {candidate.dataset.sha256[:8]} vs {live.dataset.sha256[:8]}, eval sets "
            f"{sorted(candidate.eval_sets) or '-'} vs {sorted(live.eval_sets) or '-'})",
        )
    parts = [f"{metric} on {name} {new:.4f} vs live {old:.4f} ({new - old:+.4f})" for name, new, old in pairs]
    worse = [(name, new, old) for name, new, old in pairs if new < old - tolerance]
    if worse:
        return GateDecision(False, "; ".join(parts) + f"; worse than live beyond tolerance {tolerance}")
    return GateDecision(True, "; ".join(parts))


def _evaluated(grouped_by: str | None) -> str:
    if grouped_by:
        return f"evaluated on groups it never saw (split by {grouped_by})"
    return "evaluated on rows whose groups it may have seen (no split.group_column)"


def wait_retired(probes: Probes, clock: Clock, instance: Instance, timeout: float = 5.0) -> int:
    """After a flip: wait until the old instance holds no router connection (so every new request
    goes to the new one). Returns how many were still open when the wait ended."""
    deadline = clock.monotonic() + timeout
    remaining = -1
    while clock.monotonic() < deadline:
        remaining = probes.router_connections(instance) or 0  # None: it is gone, and so are its connections
        if remaining == 0:
            return 0
        clock.sleep(0.005)
    return remaining


def check_instance(
    probes: Probes, instance: Instance, manifest: Manifest, live: Manifest | None, tolerance: float
) -> list[str]:
    """The checks of a stage, on an instance something else started (a Kubernetes preview Service
    reached through a port-forward): readiness with identity, the golden rows, the metric gate."""
    problem = probes.readiness(instance, manifest)
    if problem is not None:
        raise CheckFailed(StepName.READY, problem)
    decision = gate(manifest, live, tolerance)
    lines = [f"ready: {manifest.name} v{manifest.version} ({manifest.artifact.sha256[:12]}…)"]
    smoke = probes.smoke(instance, manifest)
    lines.append(f"smoke: {smoke}")
    problem = claimed_holds(manifest, smoke)
    if problem is not None:
        raise CheckFailed(StepName.SCORE, problem)
    if not decision.passed:
        raise CheckFailed(StepName.GATE, decision.reason)
    return [*lines, f"gate: {decision.reason}"]


def claimed_holds(manifest: Manifest, smoke: Smoke) -> str | None:
    """The golden rows are a random sample of the held-out rows: their accuracy through the instance's
    own API must agree with the accuracy the manifest claims, within sampling error. None if it does."""
    claimed = manifest.metrics.get("holdout", {}).get("accuracy")
    if claimed is None or smoke.rows == 0:
        return None
    measured = smoke.correct / smoke.rows
    allowed = max(0.05, 3 * math.sqrt(claimed * (1 - claimed) / smoke.rows))
    if measured >= claimed - allowed:
        return None
    return (
        f"accuracy {measured:.3f} on {smoke.rows} labelled rows through its own API, but the manifest claims "
        f"{claimed:.3f} held-out (more than {allowed:.3f} apart): its metrics are not this model's"
    )


def speed(pairs: list[tuple[float, float]], factor: float, alpha: float) -> tuple[bool, str]:
    """Whether the candidate is more than ``factor`` times slower than live, from paired timings of
    the same rows: (refused, the verdict in words). A sign test: if the candidate were at most
    ``factor`` times slower, more than ``factor`` times slower would be at most an even chance in
    each pair; refused when the pairs say otherwise at ``alpha``."""
    slower = sum(1 for cand, live in pairs if cand > factor * live)
    p_value = stats.sign_test(slower, len(pairs))
    cand_ms = statistics.median(c for c, _ in pairs) * 1000
    live_ms = statistics.median(v for _, v in pairs) * 1000
    words = (
        f"median {cand_ms:.1f} ms vs live {live_ms:.1f} ms on the same rows; more than {factor:g}x slower "
        f"in {slower} of {len(pairs)} paired requests"
    )
    if p_value <= alpha:
        return True, words + f" (by chance: less than 1 time in {round(1 / alpha):,})"
    return False, words
