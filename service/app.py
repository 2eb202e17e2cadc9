"""The FastAPI app: a thin HTTP layer over :class:`service.runtime.ModelRuntime`.

Wiring runs one way: the server builds the runtime and passes it, with its own callbacks
(:class:`ServerHooks`), into :func:`create_app`; nothing is planted into the app afterwards. When the
server has not loaded the model before binding, it loads in a background thread after the server
binds, so ``/healthz`` answers at once and ``/readyz`` turns 200 only once the verified model is
loaded and warmed up. If loading fails, the hooks stop the server and the process exits non-zero
(see :mod:`service.server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import openapi
from service.errors import HttpError, Invalid, NotReady, ServiceError, render
from service.fastpath import PredictRoute
from service.feedback import Feedback
from service.observe import Metrics, Observe, PredictionCollector
from service.predlog import PredictionLog, Where
from service.runtime import ModelRuntime
from service.settings import ServiceSettings
from service.shadow import Mirror
from service.v2 import V2Route

log = logging.getLogger("switchyard.service")
JSON = "application/json"
try:
    SERVER_VERSION = metadata.version("switchyard")
except metadata.PackageNotFoundError:  # the service image copies the code without installing it
    SERVER_VERSION = "unknown"


@dataclass(frozen=True)
class ServerHooks:
    """What the app needs from the server that runs it."""

    close_router_connections: Callable[[], None] = lambda: None  # after a flip (SIGUSR1)
    router_connections: Callable[[], int] = lambda: 0  # connections accepted on the unix socket
    stop: Callable[[], None] = lambda: None  # the model cannot be served: shut down


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def _error(exc: ServiceError) -> Response:
    status, headers, body = render(exc)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def create_app(settings: ServiceSettings, runtime: ModelRuntime, hooks: ServerHooks | None = None) -> Any:
    """The app factory: the ASGI app serving ``runtime``, whose artifact the caller verified."""
    hooks = hooks or ServerHooks()
    manifest = runtime.manifest
    metrics = Metrics(manifest.name, manifest.version, manifest.artifact.sha256)
    metrics.registry.register(PredictionCollector(runtime.counts))
    mirror = (
        Mirror(settings.shadow_dir, str(settings.uds), settings.workers)
        if settings.shadow_dir and settings.uds
        else None
    )
    predictions = (
        PredictionLog(
            settings.prediction_log,
            Where(manifest.name, manifest.version, settings.slot),
            inputs=settings.log_inputs,
            max_age=settings.log_max_age_days * 86400,
            max_rows=settings.log_max_rows,
        )
        if settings.prediction_log
        else None
    )
    feedback = Feedback(settings, runtime)

    def load() -> None:
        if not runtime.load():
            hooks.stop()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not runtime.loaded:
            threading.Thread(target=load, name="model-loader", daemon=True).start()
        # After a flip the controller sends SIGUSR1: the router's pooled connections to this instance
        # close (idle ones at once, busy ones after their response), so new requests reach the new one.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, hooks.close_router_connections)
        following = asyncio.create_task(mirror.run()) if mirror is not None else None
        if predictions is not None:
            predictions.start()
        yield
        if predictions is not None:
            predictions.close()
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        runtime.close()
        observed.flush()  # access lines still buffered once every connection has been served

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
        return _error(HttpError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p not in ("query", "body"))
        return _error(Invalid(f"{field}: {first['msg']}", field=field or None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error(ServiceError("internal error; see the service log"))

    @app.get("/healthz", responses=openapi.simple("the process is alive"))
    async def healthz() -> Response:
        """Liveness: the process answers (with its pid: which worker took this connection)."""
        return _json({"status": "ok", "pid": os.getpid()})

    @app.get("/readyz", responses=openapi.simple("the model is loaded and warmed up", not_ready=True))
    async def readyz() -> Response:
        """Readiness: 200 once the model is loaded and warmed up, 503 before."""
        if runtime.predictor is None:
            raise NotReady(runtime.failure or "the model is still loading", headers={"Retry-After": "1"})
        return _json(
            {
                "status": "ready",
                "name": manifest.name,
                "version": manifest.version,
                "sha256": manifest.artifact.sha256,
                "router_connections": hooks.router_connections(),
            }
        )

    @app.post("/feedback", responses=openapi.simple("the labels were stored"))
    async def post_feedback(request: Request) -> Response:
        """The true labels of earlier answers, by request id: one ``{"request_id", "label"}`` object or a
        list of them, with ``Authorization: Bearer TOKEN``. All or nothing; a second label for an id
        replaces the first."""
        return _json(await feedback.take(request))

    @app.get("/metadata", responses=openapi.simple("what a client needs to know about the model"))
    async def metadata() -> Response:
        """The model's name, version, metrics, labels and input schema."""
        return _json(openapi.metadata(manifest))

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Prometheus metrics of this process."""
        metrics.ready.set(1 if runtime.predictor else 0)
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
    served = PredictRoute(
        V2Route(app, runtime, settings.max_body_bytes, SERVER_VERSION),
        runtime,
        settings.max_body_bytes,
        mirror,
        predictions,
    )
    observed = Observe(
        served, metrics=metrics, model_version=f"{manifest.name}/{manifest.version}", log_requests=settings.access_log
    )
    return observed
