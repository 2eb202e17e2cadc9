"""Errors the service answers with. Each carries its HTTP status; one handler renders them all as

{"error": {"code": "...", "message": "...", "field": "..." | null}}

ServiceError
├── HttpError (any 4xx)     an unknown route (404) or method (405), as the HTTP layer found it
├── BadRequest (400)        malformed JSON, an unusable query parameter
├── Invalid (422)           a field is missing, of the wrong type, empty or too long
├── TooLarge (413)          the body is over the size limit
├── NotReady (503)          the model is still loading or warming up
├── Overloaded (503)        the batch queue is full; Retry-After says when to try again
└── ModelFailure (500)      the model raised on valid input (logged; the process stays up)
"""

from __future__ import annotations

from typing import Any

import orjson


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class HttpError(ServiceError):
    """An error the HTTP layer (routing) found, with the status it chose."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status
        self.code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class Invalid(ServiceError):
    status = 422
    code = "invalid_input"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class MethodNotAllowed(ServiceError):
    status = 405
    code = "method_not_allowed"


class TooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class Overloaded(ServiceError):
    status = 503
    code = "overloaded"


class ModelFailure(ServiceError):
    status = 500
    code = "model_error"


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "field": field}})


def render(exc: ServiceError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one rendering of an error, for the ASGI fast path and FastAPI's handlers alike:
    (status, headers, body)."""
    headers = [(b"content-type", b"application/json")]
    headers += [(key.lower().encode(), value.encode()) for key, value in exc.headers.items()]
    return exc.status, headers, error_body(exc.code, exc.message, exc.field)


def error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "example": "invalid_input"},
                    "message": {"type": "string", "example": "instances[0].description: must not be empty"},
                    "field": {"type": ["string", "null"], "example": "instances[0].description"},
                },
            }
        },
    }
