"""Error bodies: one shape (`schemas.ErrorBody`) for every refusal, whichever path produced it."""

from __future__ import annotations

import logging
import re

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from serving.schemas import ErrorBody, FieldError

log = logging.getLogger("voicefw.serving")
_encode = msgspec.json.Encoder().encode
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")


class Refused(Exception):
    """A request answered with a 4xx/5xx and nothing changed. `errors` name fields (400/413/422)."""

    def __init__(self, status: int, detail: str, errors: list[FieldError] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}

    def body(self) -> bytes:
        field = self.errors[0].field if self.errors else None
        return _encode(ErrorBody(self.status, self.detail, field, self.errors))


def invalid(field: str, message: str) -> Refused:
    """422 naming `field` (e.g. calls[3].start_time)."""
    return Refused(422, f"{field}: {message}", [FieldError(field, message)])


def from_decode_error(exc: msgspec.DecodeError, readable: dict[str, str] | None = None) -> Refused:
    """msgspec's message -> 422 naming the field path, or 400 'body' when the JSON is unreadable.
    `readable` replaces a regex in the message by what it means (times, numbering plans)."""
    message = str(exc)
    for pattern, meaning in (readable or {}).items():
        message = message.replace(f"`str` matching regex {pattern!r}", meaning)
    if not isinstance(exc, msgspec.ValidationError):
        return Refused(400, f"body: not valid JSON ({message})", [FieldError("body", f"not valid JSON ({message})")])
    at = _AT.search(message)
    path = at.group(1) if at else ""
    text = message[: at.start()] if at else message
    missing = _MISSING.match(text)
    if missing:  # msgspec reports a missing field at its parent object
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return invalid(path or "body", text)


def refusal_response(exc: Refused) -> Response:
    return Response(exc.body(), status_code=exc.status, headers=exc.headers, media_type="application/json")


def litestar_exception_handler(request: Request, exc: Exception) -> Response:
    """Litestar's own refusals (404, 405, bad query parameters, guards) in the same shape; anything
    unexpected is logged and answered 500 without details."""
    if isinstance(exc, Refused):
        return refusal_response(exc)
    if isinstance(exc, ValidationException):  # query parameters (the bodies are decoded by admission)
        errors = [FieldError(str(e.get("key") or "query"), str(e.get("message", "")))
                  for e in (exc.extra if isinstance(exc.extra, list) else []) if isinstance(e, dict)]
        errors = errors or [FieldError("query", str(exc.detail))]
        return refusal_response(Refused(400, "; ".join(f"{e.field}: {e.message}" for e in errors), errors))
    if isinstance(exc, HTTPException):
        return refusal_response(Refused(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})))
    log.exception("unhandled error on %s", request.url.path)
    return refusal_response(Refused(500, "internal error"))
