"""The scoring sidecar's HTTP API (Litestar + msgspec).

State is per process: the online history lives in this process and is mutated only on the event
loop (handlers are `async def`, nothing runs in a thread pool), so it needs no lock. Run ONE
worker for exact history (see serving/server.py). Model loading happens in the poller thread and
reaches requests through one reference assignment (serving/registry.py).
"""

from __future__ import annotations

import gc
import hmac
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import time
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    ServiceUnavailableException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.rate_limit import DURATION_VALUES, RateLimitConfig, RateLimitMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.params import FromQuery, JSONBody
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY

from serving.metrics import MetricsMiddleware, ServiceMetrics
from serving.numbers import InvalidNumber, normalize_number
from serving.registry import LoadedModel, ModelRegistry, Refusal
from serving.settings import ServingSettings
from voicefw_assets.online_features import OnlineHistory
from voicefw_assets.operators import NumberPlan, operator_configs

log = logging.getLogger("voicefw.serving")
FREEZE_EVERY = 5000  # calls scored between two gc.freeze() (see ScoringService._freeze_history)

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Number = Annotated[str, msgspec.Meta(max_length=128)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]


# ---------------------------------------------------------------- request / response bodies
class CallSetup(msgspec.Struct):
    """What a switch or SBC knows at INVITE time; numbers in the operator's own format."""

    operator: NonEmpty
    call_id: NonEmpty
    start_time: AwareTime
    b_number: Number
    a_number: Number | None = None  # absent or a withheld word ("anonymous") = withheld caller ID
    ingress_trunk: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class BatchRequest(msgspec.Struct):
    calls: Annotated[list[CallSetup], msgspec.Meta(min_length=1)]


class Reason(msgspec.Struct):
    feature: str
    value: float
    contribution: float  # to the log-odds; positive pushes towards fraud


class ScoreResult(msgspec.Struct):
    call_id: str
    operator: str
    probability: float
    decision: Literal["allow", "flag", "block"]
    model_version: str
    reasons: list[Reason]  # top contributions; for flag/block only unless ?explain=true
    features: dict[str, float] | None = None  # only with ?include_features=true


class BatchResult(msgspec.Struct):
    model_version: str
    results: list[ScoreResult]


class CallEnd(msgspec.Struct):
    """A call's end as the switch reports it; the history uses ended calls' outcomes.

    Send ring_s (setup to answer, or to release when unanswered), or start_time so the service
    derives it the way the batch mapping does; without either the call never counts as short.
    """

    operator: NonEmpty
    call_id: NonEmpty
    end_time: AwareTime
    answered: bool
    start_time: AwareTime | None = None
    disposition: Literal["answered", "no_answer", "busy", "cancelled", "failed"] | None = None
    answer_time: AwareTime | None = None
    ring_s: Seconds | None = None
    duration_s: Seconds | None = None
    sip_code: Annotated[int, msgspec.Meta(ge=100, le=699)] | None = None
    q850_cause: Annotated[int, msgspec.Meta(ge=0, le=127)] | None = None
    release_side: Literal["caller", "callee", "network", "unknown"] | None = None


class EndAck(msgspec.Struct):
    operator: str
    call_id: str
    observed: bool


class RefusalInfo(msgspec.Struct):
    bundle_path: str
    version: str | None
    reason: str
    at: datetime


class ModelInfo(msgspec.Struct):
    version: str
    bundle_path: str
    trained_on: Any
    metrics: Any
    thresholds: dict[str, float]
    feature_count: int
    loaded_at: datetime
    swaps: int
    last_refused: RefusalInfo | None


class Health(msgspec.Struct):
    status: str
    model_version: str | None = None


# ---------------------------------------------------------------- errors
_NAMED_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def _field_path(key: str | None, message: str) -> str:
    """msgspec reports a missing field at its parent ('calls[0]', or 'data' for the body itself);
    name the field itself."""
    key = None if key == "data" else key
    named = _NAMED_FIELD.search(message)
    if named:
        return f"{key}.{named.group(1)}" if key else named.group(1)
    return key or "body"


def validation_error_handler(_: Request, exc: ValidationException) -> Response:
    """422 naming the offending field path (e.g. calls[3].start_time); malformed JSON -> 400 'body'."""
    errors = [
        {"field": _field_path(e.get("key"), str(e.get("message", ""))), "message": str(e.get("message", ""))}
        for e in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(e, dict)
    ]
    if not errors:
        return Response({"status_code": 400, "detail": exc.detail, "field": "body", "errors": []}, status_code=400)
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return Response(
        {"status_code": 422, "detail": detail, "field": errors[0]["field"], "errors": errors},
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
    )


def _invalid(field: str, message: str) -> ValidationException:
    return ValidationException(detail=message, extra=[{"key": field, "message": message}])


def internal_error_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        body = {"status_code": exc.status_code, "detail": exc.detail}
        if exc.status_code == 400:  # the body could not be read at all (malformed JSON)
            body["field"] = "body"
        return Response(body, status_code=exc.status_code, headers=exc.headers)
    log.exception("unhandled error on %s", request.url.path)
    return Response({"status_code": 500, "detail": "internal error"}, status_code=500)


# ---------------------------------------------------------------- rate limiting
class FixedWindowRateLimit(RateLimitMiddleware):
    """RateLimitConfig's middleware with an O(1) in-process counter per client and window.

    The stock one re-serializes a list of every timestamp in the window on every request, which
    costs more than scoring at thousands of requests per second. Litestar builds one middleware
    instance per route, so the counters live on the config, shared by all routes.
    """

    async def __call__(self, scope, receive, send) -> None:
        key = self.get_identifier_for_request(scope["litestar_app"].request_class(scope))
        retry_after = take_request(self.config, key)  # type: ignore[arg-type]
        if retry_after:
            raise TooManyRequestsException(headers={"Retry-After": str(retry_after)})
        await self.app(scope, receive, send)


def take_request(config: SharedRateLimitConfig, key: str) -> int:
    """Count one request of client `key` in its fixed window: 0 if allowed, else the seconds until
    the window resets (a refused request is not counted)."""
    windows = config.windows
    now = int(time())
    reset, count = windows.get(key, (0, 0))
    if reset <= now:
        if len(windows) > 10_000:  # bounded memory under many clients
            for k in [k for k, v in windows.items() if v[0] <= now]:
                del windows[k]
        reset, count = now + DURATION_VALUES[config.rate_limit[0]], 0
    if count >= config.rate_limit[1]:
        return max(reset - now, 1)
    windows[key] = (reset, count + 1)
    return 0


def authorized(header: str, keys: tuple[bytes, ...]) -> bool:
    """`Authorization: Bearer <key>` with one of `keys` (constant-time comparison)."""
    scheme, _, token = header.partition(" ")
    given = token.strip().encode()
    return scheme.lower() == "bearer" and any(hmac.compare_digest(given, k) for k in keys)


@dataclass
class SharedRateLimitConfig(RateLimitConfig):
    windows: dict = field(default_factory=dict)  # client -> (window end, requests in it)


# ---------------------------------------------------------------- the service
class ScoringService:
    """Everything a request needs: settings, the model registry, the online history, metrics."""

    def __init__(self, settings: ServingSettings, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.history: OnlineHistory | None = None
        self.registry = registry or ModelRegistry(
            flag_override=settings.flag_threshold,
            block_override=settings.block_threshold,
            asset_key=settings.asset_key,
        )
        self.registry.on_swap = self._on_swap
        self.registry.on_refuse = self._on_refuse
        self._plans: dict[str, NumberPlan] = {name: cfg.numbers for name, cfg in operator_configs().items()}
        self._numbers: dict[tuple[str, str | None], str | None] = {}  # (operator, raw) -> E.164, bounded
        self._unfrozen_calls = 0
        self.freeze_gc = False  # set while serving (lifespan), so library use and tests leave gc alone

    def _freeze_history(self) -> None:
        """Keep the garbage collector's full passes off the request path.

        The history is hundreds of thousands of long-lived lists and dicts; a full collection walks
        all of them (measured: 380 ms pauses at 250 k entries). Every FREEZE_EVERY calls, collect the
        young generations (cheap) and move the survivors to the permanent generation, which the
        collector never walks. The history holds no reference cycles; it frees by refcount.
        """
        self._unfrozen_calls = 0
        if self.freeze_gc:
            gc.collect(1)
            gc.freeze()

    def _normalize(self, operator: str, raw: str | None, plan: NumberPlan) -> str | None:
        """normalize_number with a bounded memo: switches send the same numbers over and over."""
        key = (operator, raw)
        try:
            return self._numbers[key]
        except KeyError:
            pass
        value = normalize_number(raw, plan)  # InvalidNumber propagates and is not cached
        if len(self._numbers) >= 200_000:
            self._numbers.clear()
        self._numbers[key] = value
        return value

    def _on_refuse(self, _refusal: Refusal) -> None:
        self.metrics.refusals += 1

    def _on_swap(self, model: LoadedModel) -> None:
        """Called in the poller thread before the model becomes visible.

        The history is built once from the first bundle's state and then kept: it holds every call
        this process has seen since, which a newer bundle's state snapshot cannot know about.
        """
        if self.history is None:
            self.history = OnlineHistory.from_bundle_state(model.bundle.state_dir)
            self._freeze_history()
        self.metrics.set_model(model.version)

    # ---- requests
    def model_or_503(self) -> tuple[LoadedModel, OnlineHistory]:
        model, history = self.registry.current, self.history
        if model is None or history is None:
            refused, poll_error = self.registry.last_refused, self.registry.last_poll_error
            why = f" (last bundle refused: {refused.reason})" if refused else ""
            why += f" (cannot read the Dagster instance: {poll_error})" if poll_error else ""
            raise ServiceUnavailableException(
                detail="no model loaded yet: waiting for a valid serving_model materialization in the Dagster instance" + why
            )
        return model, history

    def canonical(self, call: CallSetup, where: str) -> tuple:
        """The call as the history and the batch features see it: (operator, call_id, UTC start,
        E.164 A and B numbers, trunk)."""
        plan = self._plans.get(call.operator)
        if plan is None:
            raise _invalid(f"{where}operator", f"unknown operator {call.operator!r}; known: {sorted(self._plans)}")
        try:
            a_number = self._normalize(call.operator, call.a_number, plan)
        except InvalidNumber as exc:
            raise _invalid(f"{where}a_number", str(exc)) from None
        try:
            b_number = self._normalize(call.operator, call.b_number, plan)
        except InvalidNumber as exc:
            raise _invalid(f"{where}b_number", str(exc)) from None
        if b_number is None:
            raise _invalid(f"{where}b_number", "b_number is required (withheld or empty is not a callee)")
        trunk = call.ingress_trunk
        if trunk is not None:
            trunk = trunk.strip(" ") or None  # as the mapping: trimmed, '' is NULL
        return (call.operator, call.call_id, call.start_time.astimezone(UTC), a_number, b_number, trunk)

    def score(self, calls: list[CallSetup], include_features: bool, explain: bool, prefix: str
              ) -> tuple[LoadedModel, list[ScoreResult]]:
        """Features in start-time order (each call sees the earlier ones), one predict for all.

        Every call is validated before the history records any of them. Reasons (TreeSHAP
        contributions) cost ~5x a prediction, so by default only flag/block decisions carry them;
        `explain` or VOICEFW_REASONS=all asks for them on every call.
        """
        model, history = self.model_or_503()  # one model for the whole request
        return model, self.score_canonical(model, history, self.canonical_all(calls, prefix), include_features, explain)

    def canonical_all(self, calls: list[CallSetup], prefix: str) -> list[tuple]:
        """Every call validated and canonical, before the history records any of them."""
        if prefix:
            return [self.canonical(c, f"{prefix}[{i}].") for i, c in enumerate(calls)]
        return [self.canonical(c, "") for c in calls]

    def score_canonical(self, model: LoadedModel, history: OnlineHistory, canon: list[tuple],
                        include_features: bool, explain: bool) -> list[ScoreResult]:
        n = len(canon)
        rows: list = [None] * n
        order = range(n) if n == 1 else sorted(range(n), key=lambda i: canon[i][2])  # stable: ties keep request order
        for i in order:
            rows[i] = history.score_start(*canon[i])  # features from strictly earlier calls, then records this one
        X = np.array(rows, dtype=np.float64)  # FEATURE_NAMES order
        if model.columns is not None:
            X = X[:, model.columns]  # the model's own order
        names = model.feature_names
        probs = model.score(X).tolist()
        decisions = model.decisions(probs)
        explain_all = explain or self.settings.reasons_for == "all"
        wanted = [i for i, d in enumerate(decisions) if explain_all or d != "allow"]
        reasons: dict[int, list[Reason]] = {}
        if wanted:
            contrib = model.contributions(X[wanted])[:, :-1]
            k = self.settings.top_reasons
            for row, i in zip(contrib, wanted, strict=True):
                top = np.argsort(-np.abs(row), kind="stable")[:k]
                reasons[i] = [Reason(names[j], float(X[i, j]), float(row[j])) for j in top if row[j] != 0.0]
        version = model.version
        results = [
            ScoreResult(
                call_id=c[1], operator=c[0], probability=prob, decision=decisions[i],
                model_version=version, reasons=reasons.get(i, []),
                features=dict(zip(names, X[i].tolist())) if include_features else None,
            )
            for i, (c, prob) in enumerate(zip(canon, probs, strict=True))
        ]
        for d in ("allow", "flag", "block"):
            k = decisions.count(d)
            if k:
                self.metrics.count_decision(d, k)
        self.metrics.calls_scored += n
        self._unfrozen_calls += n
        if self._unfrozen_calls >= FREEZE_EVERY:
            self._freeze_history()
        return results


    def end(self, history: OnlineHistory, data: CallEnd) -> EndAck:
        """Feed a (validated) call end to the history."""
        ring_s = data.ring_s
        if ring_s is None and data.start_time is not None:  # as mapping.py: coalesce(answer, end) - start
            ring_s = ((data.answer_time or data.end_time) - data.start_time).total_seconds()
        history.observe_end({"operator": data.operator, "call_id": data.call_id,
                             "end_time": data.end_time.astimezone(UTC), "answered": data.answered, "ring_s": ring_s})
        self.metrics.call_ends += 1
        return EndAck(operator=data.operator, call_id=data.call_id, observed=True)


class FastScoringPath:
    """Pure-ASGI shortcut for the hot requests, in front of Litestar.

    Litestar's request machinery (kwargs model, signature parsing, response object, middleware
    stack) costs ~120 µs of CPU per request, more than scoring a call. A well-formed POST
    /v1/score, /v1/score/batch or /v1/calls/end without query parameters is answered here instead: the body is
    decoded straight into the same msgspec Struct (strictly, so it accepts a subset of what
    Litestar accepts), checked the same way (API key, body size, batch size, operator and numbers,
    rate limit with the same counters), scored by the same `ScoringService`, and encoded by msgspec
    to the bytes Litestar would send. Every other request, and any request this path would not
    answer with 200 (bad body, missing key, over a limit, no model yet), goes to Litestar untouched
    with the body already read, so every error, the OpenAPI schema and all other endpoints stay
    Litestar's.
    """

    def __init__(self, app, service: ScoringService, rate_limit: SharedRateLimitConfig | None) -> None:
        self.app = app
        self.service = service
        self.rate_limit = rate_limit
        self.keys = tuple(k.encode() for k in service.settings.api_keys)
        self.decoders = {"/v1/score": msgspec.json.Decoder(CallSetup), "/v1/score/batch": msgspec.json.Decoder(BatchRequest),
                         "/v1/calls/end": msgspec.json.Decoder(CallEnd)}
        self.encoder = msgspec.json.Encoder()

    async def __call__(self, scope, receive, send) -> None:
        decoder = self.decoders.get(scope["path"]) if scope["type"] == "http" else None
        if decoder is None or scope["method"] != "POST" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        length, auth = b"", b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                auth = value
        if not length.isdigit() or int(length) > self.service.settings.max_body_bytes:
            await self.app(scope, receive, send)  # chunked or too big: Litestar reads (and limits) it
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        answer = self._answer(scope, decoder, body, auth) if len(body) <= self.service.settings.max_body_bytes else None
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def _answer(self, scope, decoder: msgspec.json.Decoder, body: bytes, auth: bytes) -> bytes | None:
        """The 200 response body, or None to let Litestar answer. Nothing is counted or recorded
        before every check has passed."""
        service = self.service
        try:
            data = decoder.decode(body)
        except msgspec.DecodeError:  # ValidationError included
            return None
        if self.keys and not authorized(auth.decode("latin-1"), self.keys):
            return None
        if isinstance(data, CallEnd):
            if service.history is None or service.registry.current is None or data.operator not in service._plans:
                return None
            if self.rate_limit is not None and self._limited(scope):
                return None
            return self.encoder.encode(service.end(service.history, data))
        batch = isinstance(data, BatchRequest)
        calls = data.calls if batch else [data]
        if len(calls) > service.settings.max_batch:
            return None
        model, history = service.registry.current, service.history
        if model is None or history is None:
            return None
        try:
            canon = service.canonical_all(calls, "calls" if batch else "")
        except ValidationException:
            return None
        if self.rate_limit is not None and self._limited(scope):
            return None
        results = service.score_canonical(model, history, canon, include_features=False, explain=False)
        return self.encoder.encode(BatchResult(model.version, results) if batch else results[0])

    def _limited(self, scope) -> bool:
        """Count the request against the client's rate limit; True if over it (then not counted)."""
        client = scope.get("client")  # what Litestar's get_remote_address reads
        return bool(take_request(self.rate_limit, client[0] if client else "127.0.0.1"))


def _replay(body: bytes, receive):
    """An ASGI receive that yields the already-read body first, then defers to the real one."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


def _finite(value: Any) -> Any:
    """JSON has no NaN: metrics dicts from training may hold some."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def create_app(settings: ServingSettings | None = None, *, poll: bool = True) -> MetricsMiddleware:
    """The ASGI app: Litestar wrapped in the metrics middleware (so 404s and errors are counted too).

    `poll=False` leaves model loading to the caller (`app.service.registry.load(path)`).
    """
    settings = settings or ServingSettings.from_env()
    service = ScoringService(settings)
    keys = tuple(k.encode() for k in settings.api_keys)

    async def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # async: sync guards go to a thread pool
        if not keys:
            return
        if not authorized(connection.headers.get("authorization", ""), keys):
            raise NotAuthorizedException(detail="missing or invalid API key (Authorization: Bearer <key>)")

    guards = [require_api_key] if keys else []  # no keys configured: no guard at all (it costs ~25 µs a request)

    @post("/v1/score", status_code=200, guards=guards, summary="Score one call at setup time")
    async def score_one(data: JSONBody[CallSetup], include_features: FromQuery[bool] = False,
                        explain: FromQuery[bool] = False) -> ScoreResult:
        return service.score([data], include_features, explain, prefix="")[1][0]

    @post("/v1/score/batch", status_code=200, guards=guards, summary="Score up to max_batch calls with one model")
    async def score_batch(data: JSONBody[BatchRequest], include_features: FromQuery[bool] = False,
                          explain: FromQuery[bool] = False) -> BatchResult:
        if len(data.calls) > settings.max_batch:
            raise _invalid("calls", f"at most {settings.max_batch} calls per batch, got {len(data.calls)}")
        model, results = service.score(data.calls, include_features, explain, prefix="calls")
        return BatchResult(model_version=model.version, results=results)

    @post("/v1/calls/end", status_code=200, guards=guards, summary="Report a call's end (feeds history)")
    async def call_end(data: JSONBody[CallEnd]) -> EndAck:
        _, history = service.model_or_503()
        if data.operator not in service._plans:
            raise _invalid("operator", f"unknown operator {data.operator!r}")
        return service.end(history, data)

    @get("/v1/model", guards=guards, summary="The model being served, and the last refused bundle")
    async def model_info() -> ModelInfo:
        model, _ = service.model_or_503()
        refused: Refusal | None = service.registry.last_refused
        b = model.bundle
        return ModelInfo(
            version=model.version,
            bundle_path=str(b.path),
            trained_on=_finite(b.trained_on),
            metrics=_finite(b.metrics),
            thresholds={"flag": model.flag_threshold, "block": model.block_threshold},
            feature_count=len(model.feature_names),
            loaded_at=model.loaded_at,
            swaps=service.registry.swaps,
            last_refused=RefusalInfo(refused.bundle_path, refused.version, refused.reason, refused.at) if refused else None,
        )

    @get("/healthz", summary="The process is up")
    async def healthz() -> Health:
        model = service.registry.current
        return Health(status="ok", model_version=model.version if model else None)

    @get("/readyz", summary="503 until a model is loaded")
    async def readyz() -> Health:
        model, _ = service.model_or_503()
        return Health(status="ready", model_version=model.version)

    @get("/metrics", media_type="text/plain; version=0.0.4", summary="Prometheus metrics of this process")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    def start_serving() -> None:
        service.freeze_gc = True
        if service.history is not None:
            service._freeze_history()
        if poll:
            service.registry.start(settings.poll_interval_s)

    def stop_serving() -> None:
        service.registry.stop()
        service.freeze_gc = False
        gc.unfreeze()  # let interpreter shutdown free everything normally

    rate_limit = (
        SharedRateLimitConfig(
            rate_limit=settings.rate_limit,  # type: ignore[arg-type]
            exclude=["/healthz", "/readyz", "/metrics", "/schema"],
            middleware_class=FixedWindowRateLimit,
            set_rate_limit_headers=False,
        )
        if settings.rate_limit
        else None
    )
    app = Litestar(
        route_handlers=[score_one, score_batch, call_end, model_info, healthz, readyz, metrics],
        middleware=[rate_limit.middleware] if rate_limit else [],
        exception_handlers={ValidationException: validation_error_handler, Exception: internal_error_handler},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="voicefw scoring", version="1.0.0", path="/schema"),
        on_startup=[start_serving],
        on_shutdown=[stop_serving],
        debug=False,
    )
    wrapped = MetricsMiddleware(FastScoringPath(app, service, rate_limit), service.metrics)
    wrapped.litestar = app  # type: ignore[attr-defined]
    wrapped.service = service  # type: ignore[attr-defined]
    return wrapped
