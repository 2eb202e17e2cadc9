"""The checks before any flip: readiness (with identity), the smoke test and the evaluation gate.

Each check raises :class:`CheckFailed` naming its step, or returns a one-line summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from controller import loopback
from controller.backends.base import Backend
from controller.errors import CheckFailed
from controller.state import Instance
from service.artifact import Manifest


def identity_problem(body: dict[str, Any], manifest: Manifest) -> str | None:
    want = (manifest.name, manifest.version, manifest.artifact.sha256)
    got = (body.get("name"), body.get("version"), body.get("sha256"))
    if got != want:
        return f"it serves {got[0]} v{got[1]} ({str(got[2])[:12]}…), expected {want[0]} v{want[1]} ({want[2][:12]}…)"
    return None


def probe(instance: Instance, manifest: Manifest, timeout: float = 1.0) -> str | None:
    """None if the instance is ready and serves exactly ``manifest``; otherwise why not."""
    try:
        response = loopback.client().get(instance.url + "/readyz", timeout=timeout)
    except httpx.TransportError as exc:
        return f"no answer ({type(exc).__name__})"
    if response.status_code != 200:
        return f"/readyz answered {response.status_code}"
    return identity_problem(response.json(), manifest)


def wait_ready(backend: Backend, instance: Instance, manifest: Manifest, timeout: float) -> str:
    """Poll readiness while watching the instance: an early exit fails at once with its last log lines."""
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < timeout:
        if not backend.alive(instance.handle):
            code = backend.exit_code(instance.handle)
            how = f" with code {code}" if code is not None else ""
            raise CheckFailed(
                "ready", f"the instance exited{how}; its last log lines:\n{backend.logs(instance.handle)}"
            )
        problem = probe(instance, manifest)
        if problem is None:
            return f"ready in {time.monotonic() - started:.1f}s"
        if "expected" in problem:
            raise CheckFailed("ready", f"wrong identity: {problem}")
        last = problem
        time.sleep(0.05)
    raise CheckFailed(
        "ready", f"not ready within {timeout:g}s ({last}); last log lines:\n{backend.logs(instance.handle)}"
    )


def smoke(instance: Instance, manifest: Manifest) -> str:
    """The manifest's golden rows through the instance's HTTP API: the same answers as at training time."""
    golden = manifest.golden
    if not golden:
        return "no golden rows in the manifest: smoke test skipped"
    try:
        response = loopback.client().post(
            instance.url + "/predict", json={"instances": [g.input for g in golden]}, timeout=30
        )
    except httpx.TransportError as exc:
        raise CheckFailed("smoke", f"/predict did not answer: {exc}") from exc
    if response.status_code != 200:
        raise CheckFailed("smoke", f"/predict answered {response.status_code}: {response.text[:200]}")
    if response.headers.get("x-model-version") != f"{manifest.name}/{manifest.version}":
        raise CheckFailed("smoke", f"X-Model-Version is {response.headers.get('x-model-version')!r}")
    try:
        labels = [p["label"] for p in response.json()["predictions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckFailed("smoke", f"malformed /predict answer: {exc}") from exc
    if len(labels) != len(golden):
        raise CheckFailed("smoke", f"{len(labels)} predictions for {len(golden)} golden rows")
    differ = [i for i, (label, row) in enumerate(zip(labels, golden, strict=True)) if label != row.predicted]
    if differ:
        i = differ[0]
        raise CheckFailed(
            "smoke",
            f"{len(differ)} of {len(golden)} golden rows differ from training time "
            f"(row {i}: {labels[i]!r}, expected {golden[i].predicted!r})",
        )
    accuracy = sum(label == row.label for label, row in zip(labels, golden, strict=True)) / len(golden)
    return f"{len(golden)} golden rows answered as at training time (accuracy {accuracy:.3f})"


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def gate(candidate: Manifest, live: Manifest | None, tolerance: float) -> GateDecision:
    """CD4ML: the candidate's metric must not be worse than the live model's beyond ``tolerance``,
    compared only on evaluation data both were scored on (same data fingerprint)."""
    if live is None:
        return GateDecision(True, "nothing live to compare with")
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


def wait_router_connections_closed(instance: Instance, timeout: float = 5.0) -> int:
    """After a flip: wait until the old instance holds no router connection (so every new request
    goes to the new one). Returns how many were still open when the wait ended."""
    deadline = time.monotonic() + timeout
    remaining = -1
    while time.monotonic() < deadline:
        try:
            remaining = int(
                loopback.client().get(instance.url + "/readyz", timeout=1.0).json().get("router_connections", 0)
            )
        except (httpx.TransportError, ValueError):
            return 0  # it is gone: so are its connections
        if remaining == 0:
            return 0
        time.sleep(0.005)
    return remaining
