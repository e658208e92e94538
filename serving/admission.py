"""Every admission rule in one place: API key, body size, body decoding, batch size, times, rate limit.

Both entry points (the Litestar handlers and the ASGI shortcut in serving/fastpath.py) answer the
hot routes through `serving.endpoints.respond`, which applies these rules in this order:
  401 key -> 413 size -> 400/422 body (strict msgspec, then batch size, operator, numbers, times)
  -> 429 rate -> 503 no model / store down -> 200.
A refused request changes no state; only the rate-limit counter counts it (401 and 413 are not
counted: they cost nothing to refuse). The client a limit counts against is the API key when keys
are configured, else the peer address, which uvicorn takes from X-Forwarded-For only when the
peer is one of VOICEFW_TRUSTED_PROXIES (serving/server.py).
"""

from __future__ import annotations

import hashlib
import hmac
import msgspec

from serving.errors import Refused, from_decode_error, invalid
from serving.history_store import WINDOW_S, RateToken
from serving.schemas import TIME_PATTERN, TIME_RULE, FieldError, RequestTypes
from serving.settings import ServingSettings


class Admission:
    def __init__(self, settings: ServingSettings, requests: RequestTypes, readable: dict[str, str]) -> None:
        self.max_body = settings.max_body_bytes
        self.max_batch = settings.max_batch
        self.keys = tuple(k.encode() for k in sorted(settings.api_keys))
        # a key is counted under a digest of itself: the raw key never reaches the store
        self._key_ids = [hashlib.sha256(k).hexdigest()[:16] for k in self.keys]
        self.rate = (settings.rate_limit[1], WINDOW_S[settings.rate_limit[0]]) if settings.rate_limit else None
        self.decoders = requests.decoders
        self.readable = {TIME_PATTERN: TIME_RULE, **readable}  # regex -> what to tell the caller

    def client(self, authorization: bytes | str, peer: str | None) -> str:
        """Who the request counts as: 'key:<digest>' with keys configured (401 without a valid one),
        else 'ip:<peer address>'."""
        if not self.keys:
            return f"ip:{peer or 'unknown'}"
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        given = token.strip().encode("latin-1", "replace")
        if scheme.lower() == "bearer":
            for key, key_id in zip(self.keys, self._key_ids, strict=True):
                if hmac.compare_digest(given, key):
                    return f"key:{key_id}"
        raise Refused(401, "missing or invalid API key (Authorization: Bearer <key>)",
                      headers={"WWW-Authenticate": "Bearer"})

    def token(self, client: str) -> RateToken | None:
        return RateToken(client, *self.rate) if self.rate else None

    def too_large(self, size: int) -> Refused:
        message = f"the body is {size} bytes; the limit is {self.max_body} bytes (VOICEFW_MAX_BODY_BYTES)"
        return Refused(413, f"body: {message}", [FieldError("body", message)], headers={"Connection": "close"})

    def check_declared_length(self, content_length: bytes | str | None) -> None:
        """413 before reading anything when Content-Length already says too much."""
        if content_length is not None:
            text = content_length.decode("latin-1") if isinstance(content_length, bytes) else content_length
            if text.strip().isdigit() and int(text) > self.max_body:
                raise self.too_large(int(text))

    async def read_body(self, receive, content_length: bytes | str | None) -> bytes:
        """The request body, stopping at the limit (chunked bodies included)."""
        self.check_declared_length(content_length)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise Refused(400, "the client went away before sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self.too_large(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def decode(self, path: str, body: bytes):
        """The body as the route's msgspec struct (strict), with the batch limit: else 400/422."""
        try:
            data = self.decoders[path].decode(body)
        except msgspec.DecodeError as exc:
            raise from_decode_error(exc, self.readable) from None
        calls = getattr(data, "calls", None)
        if calls is not None and len(calls) > self.max_batch:
            raise invalid("calls", f"at most {self.max_batch} calls per batch (VOICEFW_MAX_BATCH), got {len(calls)}")
        return data
