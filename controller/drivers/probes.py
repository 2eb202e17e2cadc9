"""The instance HTTP probes: readiness with identity, the golden-row smoke test, and the count of router
connections an instance still holds after a flip. All on loopback, with short timeouts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from artifact.manifest import Manifest
from controller.core.facts import Instance
from controller.drivers import loopback
from controller.errors import CheckFailed
from controller.vocabulary import StepName


def identity_problem(body: dict[str, Any], manifest: Manifest) -> str | None:
    want = (manifest.name, manifest.version, manifest.artifact.sha256)
    got = (body.get("name"), body.get("version"), body.get("sha256"))
    if got != want:
        return f"it serves {got[0]} v{got[1]} ({str(got[2])[:12]}…), expected {want[0]} v{want[1]} ({want[2][:12]}…)"
    return None


@dataclass(frozen=True)
class Smoke:
    """The golden rows through an instance: a one-line summary, and how many it got right."""

    summary: str
    rows: int = 0
    correct: int = 0

    def __str__(self) -> str:
        return self.summary


class HttpProbes:
    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout

    def readiness(self, instance: Instance, manifest: Manifest) -> str | None:
        try:
            response = loopback.client().get(instance.url + "/readyz", timeout=self.timeout)
        except httpx.TransportError as exc:
            return f"no answer ({type(exc).__name__})"
        if response.status_code != 200:
            return f"/readyz answered {response.status_code}"
        return identity_problem(response.json(), manifest)

    def smoke(self, instance: Instance, manifest: Manifest) -> Smoke:
        golden = manifest.golden
        if not golden:
            return Smoke("no golden rows in the manifest: smoke test skipped")
        try:
            response = loopback.client().post(
                instance.url + "/predict", json={"instances": [g.input for g in golden]}, timeout=30
            )
        except httpx.TransportError as exc:
            raise CheckFailed(StepName.SMOKE, f"/predict did not answer: {exc}") from exc
        if response.status_code != 200:
            raise CheckFailed(StepName.SMOKE, f"/predict answered {response.status_code}: {response.text[:200]}")
        if response.headers.get("x-model-version") != f"{manifest.name}/{manifest.version}":
            raise CheckFailed(StepName.SMOKE, f"X-Model-Version is {response.headers.get('x-model-version')!r}")
        try:
            labels = [p["label"] for p in response.json()["predictions"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckFailed(StepName.SMOKE, f"malformed /predict answer: {exc}") from exc
        if len(labels) != len(golden):
            raise CheckFailed(StepName.SMOKE, f"{len(labels)} predictions for {len(golden)} golden rows")
        differ = [i for i, (label, row) in enumerate(zip(labels, golden, strict=True)) if label != row.predicted]
        if differ:
            i = differ[0]
            raise CheckFailed(
                StepName.SMOKE,
                f"{len(differ)} of {len(golden)} golden rows differ from training time "
                f"(row {i}: {labels[i]!r}, expected {golden[i].predicted!r})",
            )
        correct = sum(label == row.label for label, row in zip(labels, golden, strict=True))
        summary = f"{len(golden)} golden rows answered as at training time (accuracy {correct / len(golden):.3f})"
        return Smoke(summary, len(golden), correct)

    def paired_latency(
        self, candidate: Instance, live: Instance, manifest: Manifest, pairs: int = 40
    ) -> list[tuple[float, float]]:
        """(candidate, live) seconds of the same one-row request, sent to each in turn (the order
        alternating), over the golden rows: whatever else the machine is doing at that moment slows
        both requests of a pair alike, so the pair compares the models, not the moment."""
        rows = [g.input for g in manifest.golden] or [{}]
        client, timed = loopback.client(), []

        def took(instance: Instance, row: Any) -> float:
            started = time.perf_counter()
            try:
                client.post(instance.url + "/predict", json=row, timeout=30)
            except httpx.TransportError as exc:
                raise CheckFailed(StepName.SPEED, f"v{instance.version} /predict did not answer: {exc}") from exc
            return time.perf_counter() - started

        took(candidate, rows[0]), took(live, rows[0])  # first-call costs are not the model's
        for i in range(pairs):
            row = rows[i % len(rows)]
            if i % 2:
                live_s = took(live, row)
                timed.append((took(candidate, row), live_s))
            else:
                cand_s = took(candidate, row)
                timed.append((cand_s, took(live, row)))
        return timed

    def router_connections(self, instance: Instance) -> int | None:
        try:
            body = loopback.client().get(instance.url + "/readyz", timeout=self.timeout).json()
        except (httpx.TransportError, ValueError):
            return None
        return int(body.get("router_connections", 0))
