"""The FastAPI app: a thin HTTP layer over :class:`service.predictor.Predictor`.

The model loads in a background thread after the server binds, so ``/healthz`` answers at once and
``/readyz`` turns 200 only once the verified model is loaded and a warm-up on the manifest's golden
rows has succeeded. If loading fails, the process exits non-zero (see :mod:`service.server`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from threadpoolctl import threadpool_limits

from service import openapi
from service.artifact import Manifest, load_model
from service.batching import MicroBatcher
from service.errors import NotReady, ServiceError, error_body
from service.fastpath import PredictRoute
from service.observe import Metrics, Observe, PredictionCollector
from service.predictor import Limits, Predictor
from service.settings import ServiceSettings

log = logging.getLogger("switchyard.service")
JSON = "application/json"


class ModelState:
    """What the app serves, filled in by the loader thread."""

    def __init__(self, settings: ServiceSettings, manifest: Manifest) -> None:
        self.settings = settings
        self.manifest = manifest
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.failure: str | None = None
        self.on_fatal: Callable[[], None] = lambda: None
        # Set by the server: close the router's (unix socket) connections, count them.
        self.close_router_connections: Callable[[], None] = lambda: None
        self.router_connections: Callable[[], int] = lambda: 0

    def counts(self) -> tuple[dict[str, int], int]:
        if self.predictor is None or self.batcher is None:
            return {}, 0
        return dict(zip(self.predictor.classes, self.predictor.label_counts, strict=True)), self.batcher.batches

    def load(self) -> None:
        settings = self.settings
        try:
            threadpool_limits(settings.native_threads())
            model, manifest = load_model(settings.model, allow_version_mismatch=settings.allow_version_mismatch)
            predictor = Predictor(model, manifest, Limits(settings.max_instances, settings.max_text_length))
            golden = [predictor.parse(row.input)[0] for row in manifest.golden]
            if golden:
                predictor.predict(golden, None)  # warm-up: first-call costs are paid before readiness
                predictor.label_counts = [0] * len(predictor.classes)
        except Exception as exc:
            self.failure = f"cannot serve {settings.model}: {exc}"
            log.error(self.failure)
            self.on_fatal()
            return
        self.batcher = MicroBatcher(
            predictor.predict,
            max_batch_size=settings.max_batch_size if settings.batching else 1,
            max_wait_ms=settings.max_wait_ms,
            max_queue_rows=settings.max_queue_rows,
        )
        self.predictor = predictor
        log.info(f"ready: {manifest.name} v{manifest.version} ({manifest.model['kind']})")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def _error(exc: ServiceError) -> Response:
    return Response(
        error_body(exc.code, exc.message, exc.field), status_code=exc.status, media_type=JSON, headers=exc.headers
    )


def create_app(settings: ServiceSettings, manifest: Manifest) -> tuple[Any, ModelState]:
    """The app factory: the ASGI app and the model state it serves. ``manifest`` is read (and its model
    file verified) by the caller before binding."""
    state = ModelState(settings, manifest)
    metrics = Metrics(manifest.name, manifest.version, manifest.artifact.sha256)
    metrics.registry.register(PredictionCollector(state.counts))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=state.load, name="model-loader", daemon=True)
        loader.start()
        # After a flip the controller sends SIGUSR1: the router's pooled connections to this instance
        # close (idle ones at once, busy ones after their response), so new requests reach the new one.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: state.close_router_connections())
        yield
        if state.batcher:
            state.batcher.close()

    app = FastAPI(
        title=f"Switchyard: {manifest.name}",
        version=str(manifest.version),
        description="Predictions from one verified model version.",
        lifespan=lifespan,
    )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return Response(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            media_type=JSON,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p not in ("query", "body"))
        return Response(
            error_body("invalid_input", f"{field}: {first['msg']}", field or None), status_code=422, media_type=JSON
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return Response(
            error_body("internal_error", "internal error; see the service log"), status_code=500, media_type=JSON
        )

    @app.get("/healthz", responses=openapi.simple("the process is alive"))
    async def healthz() -> Response:
        """Liveness: the process answers (with its pid: which worker took this connection)."""
        return _json({"status": "ok", "pid": os.getpid()})

    @app.get("/readyz", responses=openapi.simple("the model is loaded and warmed up", not_ready=True))
    async def readyz() -> Response:
        """Readiness: 200 once the model is loaded and warmed up, 503 before."""
        if state.predictor is None:
            raise NotReady(state.failure or "the model is still loading", headers={"Retry-After": "1"})
        return _json(
            {
                "status": "ready",
                "name": manifest.name,
                "version": manifest.version,
                "sha256": manifest.artifact.sha256,
                "router_connections": state.router_connections(),
            }
        )

    @app.get("/metadata", responses=openapi.simple("what a client needs to know about the model"))
    async def metadata() -> Response:
        """The model's name, version, metrics, labels and input schema."""
        return _json(openapi.metadata(manifest))

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Prometheus metrics of this process."""
        metrics.ready.set(1 if state.predictor else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec["paths"]["/predict"] = {
                "post": {
                    "summary": "Predict",
                    "operationId": "predict",
                    "description": "Predict labels for one instance or a batch.",
                    **openapi.predict_spec(manifest),
                }
            }
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
    served = PredictRoute(app, state, settings.max_body_bytes)
    observed = Observe(
        served, metrics=metrics, model_version=f"{manifest.name}/{manifest.version}", log_requests=settings.access_log
    )
    return observed, state
