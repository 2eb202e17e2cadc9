"""Per-request observability as one pure ASGI middleware (cheaper than BaseHTTPMiddleware):
request id in and out, ``X-Model-Version`` on every response, Prometheus counters and latency
histograms by route, status and traffic (``live``, or ``shadow`` for copies of another instance's
requests, so that no dashboard mistakes them for users), and one JSON log line per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from artifact.predlog import CHECK_HEADER
from artifact.shadow import SHADOW_HEADER

access_log = logging.getLogger("switchyard.access")

KNOWN_ROUTES = frozenset({"/predict", "/healthz", "/readyz", "/metadata", "/metrics", "/openapi.json", "/docs"})


def route_of(path: str) -> str:
    """The route label of a request path: known routes as they are, the Open Inference Protocol's by
    kind (model names and versions would make labels unbounded), anything else "other"."""
    if path in KNOWN_ROUTES:
        return path
    if path.startswith("/v2/models/"):
        return "/v2/models/infer" if path.endswith("/infer") else "/v2/models"
    return "/v2" if path == "/v2" or path.startswith("/v2/") else "other"


# Fine where models answer (a millisecond or a few): the agent compares a new version's p95 with
# twice the old one's, and a bucket bound is what it reads, so coarse buckets would hide a 1 ms model
# that became 5 ms behind a 2 -> 5 ms jump.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Metrics:
    def __init__(self, name: str, version: int, sha256: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "switchyard_requests", "HTTP requests", ["route", "method", "status", "traffic"], registry=self.registry
        )
        self.latency = Histogram(
            "switchyard_request_duration_seconds",
            "HTTP request latency",
            ["route", "status", "traffic"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        info = Gauge(
            "switchyard_model_info",
            "The model this process serves",
            ["name", "version", "sha256"],
            registry=self.registry,
        )
        info.labels(name, str(version), sha256).set(1)
        self.ready = Gauge("switchyard_ready", "1 once the model is loaded and warmed up", registry=self.registry)


class PredictionCollector(Collector):
    """Predictions by label and model calls, read at scrape time from counters the model thread keeps
    (no per-request Prometheus work on the hot path)."""

    def __init__(self, source: Callable[[], tuple[dict[str, int], dict[str, int], int]]) -> None:
        self.source = source

    def collect(self) -> Any:
        live, shadow, batches = self.source()
        family = CounterMetricFamily("switchyard_predictions", "Predictions by label", labels=["label", "traffic"])
        for traffic, by_label in (("live", live), ("shadow", shadow)):
            for label, count in by_label.items():
                family.add_metric([label, traffic], count)
        yield family
        yield CounterMetricFamily("switchyard_model_calls", "Model calls (one per batch)", value=batches)


class Observe:
    def __init__(self, app: Any, *, metrics: Metrics, model_version: str, log_requests: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.model_header = (b"x-model-version", model_version.encode())
        self.model_version = model_version
        self.log_requests = log_requests
        # Per-request costs add up at thousands of requests a second: request ids come from a random
        # per-process prefix and a counter (no urandom call each), metric children are looked up once
        # per (route, method, status), and access lines are buffered and written by a short timer.
        self._id_prefix = uuid.uuid4().hex[:20]
        self._ids = itertools.count()
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._lines: list[bytes] = []

    def _request_id(self) -> bytes:
        return f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFFFFFF:012x}".encode()

    def _observe(self, route: str, method: str, code: str, traffic: str, elapsed: float) -> None:
        key = (route, method, code, traffic)
        children = self._children.get(key)
        if children is None:
            children = (
                self.metrics.requests.labels(route, method, code, traffic),
                self.metrics.latency.labels(route, code, traffic),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)

    def _log(self, line: bytes) -> None:
        if not self._lines:
            asyncio.get_running_loop().call_later(0.05, self._flush)
        self._lines.append(line)

    def flush(self) -> None:
        """Write the buffered access lines now (the server calls this once it has stopped)."""
        self._flush()

    def _flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            access_log.info(b"\n".join(lines).decode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = b""
        traffic = "live"
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value[:128]
            elif key == SHADOW_HEADER:
                traffic = "shadow"
                scope["switchyard.shadow"] = True
            elif key == CHECK_HEADER:
                scope["switchyard.check"] = True
        if not request_id:
            request_id = self._request_id()
        scope["switchyard.request_id"] = request_id
        status = 500
        extra_headers = [(b"x-request-id", request_id), self.model_header]

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *extra_headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            path = scope["path"]
            route = route_of(path)
            code = str(status)
            self._observe(route, scope["method"], code, traffic, elapsed)
            if self.log_requests:
                self._log(
                    orjson.dumps(
                        {
                            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                            "request_id": request_id.decode(errors="replace"),
                            "method": scope["method"],
                            "route": route,
                            "status": status,
                            "traffic": traffic,
                            "latency_ms": round(elapsed * 1000, 3),
                            "model_version": self.model_version,
                            "batch_size": scope.get("switchyard.batch_size"),
                        }
                    )
                )
