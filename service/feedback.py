"""``POST /feedback``: the true labels of earlier answers come back by request id, into the
prediction log's feedback table (:mod:`artifact.predlog`).

Off unless the instance has both a prediction log and a token file (the controller gives every
instance its deployment's); the token is read once at start, with a size cap, and compared in
constant time. The body is counted as it arrives against the service's body limit. A batch is
stored whole or not at all: a malformed item, an unknown label or a request id the log never had
refuses it with a 422 that names the first few.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import orjson
from fastapi import Request

from artifact import predlog
from artifact.safeio import UnsafeFile, read_capped
from service.errors import BadRequest, HttpError, Invalid, NotReady, TooLarge, Unauthorized
from service.runtime import ModelRuntime
from service.settings import ServiceSettings

MAX_TOKEN_BYTES = 4096


class Feedback:
    def __init__(self, settings: ServiceSettings, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self.path = settings.prediction_log
        self.limit = settings.max_body_bytes
        self.token: bytes | None = None
        self.off = "feedback is not enabled on this instance (it needs a prediction log and a token file)"
        if settings.feedback_token_file is not None and self.path is not None:
            try:
                self.token = read_capped(settings.feedback_token_file, MAX_TOKEN_BYTES).strip() or None
            except (OSError, UnsafeFile) as exc:
                self.off = f"feedback is off: its token file cannot be read ({exc})"

    async def take(self, request: Request) -> dict[str, Any]:
        if self.token is None or self.path is None:
            raise HttpError(404, self.off)
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, b"Bearer " + self.token):
            raise Unauthorized(
                "POST /feedback needs Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"}
            )
        predictor = self.runtime.predictor
        if predictor is None:
            raise NotReady("the model is still loading", headers={"Retry-After": "1"})
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.limit:
                raise TooLarge(f"the body is over the limit of {self.limit} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        pairs = parse(payload)
        path, known = self.path, set(predictor.classes)

        def store() -> predlog.Stored:
            conn = predlog.connect(path)
            try:
                return predlog.add_feedback(conn, pairs, known)
            finally:
                conn.close()

        try:
            stored = await asyncio.to_thread(store)
        except predlog.FeedbackRefused as exc:
            raise Invalid(str(exc)) from None
        return {"stored": stored.stored, "replaced": stored.replaced, "late": stored.late}


def parse(payload: Any) -> list[tuple[str, str]]:
    """``{"request_id", "label"}`` or a non-empty list of them -> pairs; the shape is checked here,
    the ids and labels by the log."""
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise Invalid("the list of labels is empty")
    pairs = []
    for index, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("request_id"), str)
            or not isinstance(item.get("label"), str)
        ):
            raise Invalid(f'item {index}: each item must be {{"request_id": "...", "label": "..."}}', field=str(index))
        pairs.append((item["request_id"], item["label"]))
    return pairs
