"""``POST /predict`` as a pure ASGI handler in front of FastAPI, and the pieces it shares with the Open
Inference Protocol's handler (:mod:`service.v2`): reading a bounded body, running rows through the
batcher, sending a response.

The hot route skips FastAPI's routing, Request object and middleware stack (a measured ~0.1 ms a
request, a third of the service's own overhead at concurrency 1); every other route, the error
handlers and the OpenAPI schema stay with FastAPI. Validation and the error shape are the
predictor's and the errors module's, the same for both paths.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import orjson

from artifact.shadow import ELAPSED_HEADER
from service.batching import MicroBatcher, Render
from service.errors import BadRequest, Invalid, MethodNotAllowed, ModelFailure, NotReady, ServiceError, TooLarge, render
from service.predictor import Row
from service.predlog import PredictionLog
from service.runtime import ModelRuntime
from service.shadow import Mirror

log = logging.getLogger("switchyard.service")
JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictRoute:
    def __init__(
        self,
        app: Any,
        runtime: ModelRuntime,
        max_body_bytes: int,
        mirror: Mirror | None = None,
        predictions: PredictionLog | None = None,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.limit = max_body_bytes
        self.mirror = mirror
        self.predictions = predictions

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        shadow = scope.get("switchyard.shadow", False)
        request = b""
        rows: list[Row] = []
        logged = self.predictions is not None and not scope.get("switchyard.check")
        answers: list[tuple[str, float]] | None = [] if logged else None
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("only POST is allowed on /predict", headers={"Allow": "POST"})
            request = await read_body(scope, receive, self.limit)
            status, headers = 200, JSON_HEADERS
            body = await self._predict(scope, request, shadow, rows, answers)
        except ServiceError as exc:
            status, headers, body = render(exc)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if shadow:  # the live instance pairs its own time with this one, measured the same way
            headers = [*headers, (ELAPSED_HEADER, b"%.3f" % elapsed_ms)]
        await respond(send, status, headers, body)
        predictions = self.predictions
        if predictions is not None and answers:
            predictions.record(scope.get("switchyard.request_id", b""), rows, answers, shadow)
        mirror = self.mirror
        if mirror is not None and mirror.active and status == 200:
            mirror.offer(request, scope.get("switchyard.request_id", b""), body, elapsed_ms)

    async def _predict(
        self,
        scope: dict[str, Any],
        body: bytes,
        shadow: bool,
        rows: list[Row],
        answers: list[tuple[str, float]] | None,
    ) -> bytes:
        predictor, batcher = self.runtime.predictor, self.runtime.batcher
        if predictor is None or batcher is None:
            raise NotReady("the model is still loading", headers={"Retry-After": "1"})
        top_k = _top_k(scope["query_string"])
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        rows.extend(predictor.parse(payload))
        scope["switchyard.batch_size"] = len(rows)
        render = partial(predictor.render, top_k=top_k, shadow=shadow, answers=answers)
        return predictor.response(await run_model(batcher, rows, render))


async def respond(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to be over ``limit``."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            if not value.isdigit():
                raise BadRequest("Content-Length must be a number")
            if int(value) > limit:
                raise TooLarge(f"the body has {int(value)} bytes, the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError  # the client went away: nothing to answer
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def run_model(batcher: MicroBatcher, rows: list[Row], render: Render) -> Any:
    """The rows through the batcher; a model that raises on valid input is a 500 for this request only."""
    try:
        return await batcher.submit(rows, render)
    except (ServiceError, asyncio.CancelledError):
        raise
    except Exception as exc:
        log.exception("the model failed on a valid request")
        raise ModelFailure(f"the model failed: {type(exc).__name__}") from exc


def _top_k(query: bytes) -> int | None:
    if not query:
        return None
    values = parse_qs(query.decode("latin-1")).get("top_k")
    if not values:
        return None
    raw = values[-1]
    if not raw.isdigit() or int(raw) < 1:
        raise Invalid("top_k must be a positive integer", field="top_k")
    return int(raw)
