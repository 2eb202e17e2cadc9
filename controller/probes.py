"""The instance HTTP probes: readiness with identity, the golden-row smoke test, and the count of router
connections an instance still holds after a flip. All on loopback, with short timeouts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from artifact.manifest import Manifest
from controller import loopback
from controller.errors import CheckFailed
from controller.facts import Instance


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
        correct = sum(label == row.label for label, row in zip(labels, golden, strict=True))
        summary = f"{len(golden)} golden rows answered as at training time (accuracy {correct / len(golden):.3f})"
        return Smoke(summary, len(golden), correct)

    def latency(self, instance: Instance, manifest: Manifest, requests: int = 20) -> float:
        """The fastest of one-row requests over the golden rows, one at a time (after one unmeasured):
        what the model costs. A median would measure how busy the machine is as much as the model (a
        stage under load), while a model that is really slower cannot be fast even once."""
        rows = [g.input for g in manifest.golden][:requests] or [{}]
        client, took = loopback.client(), []
        for i in range(len(rows) + 1):
            started = time.perf_counter()
            try:
                client.post(instance.url + "/predict", json=rows[max(0, i - 1)], timeout=30)
            except httpx.TransportError as exc:
                raise CheckFailed("speed", f"/predict did not answer: {exc}") from exc
            if i:
                took.append(time.perf_counter() - started)
        return min(took)

    def router_connections(self, instance: Instance) -> int | None:
        try:
            body = loopback.client().get(instance.url + "/readyz", timeout=self.timeout).json()
        except (httpx.TransportError, ValueError):
            return None
        return int(body.get("router_connections", 0))
