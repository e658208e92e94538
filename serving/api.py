"""The scoring sidecar's ASGI app: Litestar routes, the ASGI shortcut, metrics, lifespan.

Request bodies are decoded by admission (strict msgspec), not by Litestar, so the handlers of the
hot routes take the raw request; their OpenAPI operations are described from the same msgspec
structs (schemas.openapi_schemas), with every status a route can answer.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.params import FromQuery
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
    SecurityScheme,
)

from serving.admission import Admission
from serving.endpoints import HotRoutes
from serving.errors import Refused, litestar_exception_handler
from serving.fastpath import FastPath
from serving.history_store import RateLimited, StoreUnavailable
from serving.metrics import MetricsMiddleware
from serving.registry import Refusal
from serving.schemas import Health, ModelInfo, RefusalInfo
from serving.service import ScoringService
from serving.settings import ServingSettings

_encode = msgspec.json.Encoder().encode
_STATUS_TEXT = {
    200: "OK", 400: "Unreadable JSON or bad query parameter (`errors` names it)", 401: "Missing or invalid API key",
    413: "Body over VOICEFW_MAX_BODY_BYTES (the detail says the limit)", 422: "Invalid field (`field` and `errors` name it)",
    429: "Over VOICEFW_RATE_LIMIT (Retry-After says when to retry)",
    503: "No model loaded yet, or the online store is unavailable (the detail says why)",
}


def _operation(request: str | None, ok: str, statuses: tuple[int, ...], secured: bool) -> type[Operation]:
    """An OpenAPI Operation whose body and responses reference the msgspec-generated components."""

    def ref(name: str) -> dict:
        return {"application/json": OpenAPIMediaType(schema=Reference(f"#/components/schemas/{name}"))}

    @dataclass
    class Described(Operation):
        def __post_init__(self) -> None:
            if request is not None:
                self.request_body = RequestBody(content=ref(request), required=True)
            self.responses = {"200": OpenAPIResponse(description="OK", content=ref(ok))}
            for status in statuses:
                if status != 401 or secured:
                    self.responses[str(status)] = OpenAPIResponse(description=_STATUS_TEXT[status], content=ref("ErrorBody"))
            self.security = [{"bearer": []}] if secured else None

    return Described


def _finite(value: Any) -> Any:
    """JSON has no NaN: metrics dicts from training may hold some."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _refusal_info(r: Refusal | None) -> RefusalInfo | None:
    return RefusalInfo(r.bundle_path, r.version, r.reason, r.at) if r else None


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status_code=status, media_type="application/json")


def create_app(settings: ServingSettings | None = None, *, poll: bool = True, service: ScoringService | None = None
               ) -> MetricsMiddleware:
    """The ASGI app: the shortcut and Litestar, wrapped in the metrics middleware (so 404s and errors
    are counted too). `poll=False` leaves model loading to the caller (`app.service.registry.load(path)`)."""
    # Litestar's logging config sends INFO to the console; the Dagster instance's storage check
    # (alembic, SQLite/PostgreSQL migrations) would then print a dozen lines at every start
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = settings or ServingSettings.from_env()
    service = service or ScoringService(settings)
    admission = Admission(settings, service.requests, service.readable)
    request_names, schemas = service.requests.openapi_schemas()
    hot = HotRoutes(service, admission)
    secured = bool(settings.api_keys)
    hot_statuses = (400, 401, 413, 422, 429, 503)

    async def admit_v1(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        """The other /v1 routes: key and rate limit, by the same rules as the hot routes."""
        client = admission.client(connection.headers.get("authorization", ""),
                                  connection.client.host if connection.client else None)
        rate = admission.token(client)
        if rate is not None:
            try:
                service.store.take(rate)
            except RateLimited as exc:
                raise Refused(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
            except StoreUnavailable:
                pass

    async def hot_route(request: Request, path: str, include_features: bool, explain: bool) -> Response:
        status, headers, body = await hot.respond(path, request.receive, request.scope["headers"],
                                                  request.client.host if request.client else None,
                                                  include_features, explain)
        extra = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k not in (b"content-type", b"content-length")}
        return Response(body, status_code=status, media_type="application/json", headers=extra)

    @post("/v1/score", status_code=200, summary="Score one call at setup time",
          operation_class=_operation(request_names["/v1/score"], "ScoreResult", hot_statuses, secured))
    async def score_one(request: Request, include_features: FromQuery[bool] = False,
                        explain: FromQuery[bool] = False) -> Response:
        return await hot_route(request, "/v1/score", include_features, explain)

    @post("/v1/score/batch", status_code=200, summary="Score up to VOICEFW_MAX_BATCH calls with one model, all or none",
          operation_class=_operation(request_names["/v1/score/batch"], "BatchResult", hot_statuses, secured))
    async def score_batch(request: Request, include_features: FromQuery[bool] = False,
                          explain: FromQuery[bool] = False) -> Response:
        return await hot_route(request, "/v1/score/batch", include_features, explain)

    @post("/v1/calls/end", status_code=200, summary="Report a call's end (feeds the history's outcome shares)",
          operation_class=_operation(request_names["/v1/calls/end"], "EndAck", hot_statuses, secured))
    async def call_end(request: Request) -> Response:
        return await hot_route(request, "/v1/calls/end", False, False)

    @get("/v1/model", guards=[admit_v1], summary="The model being served, refused bundles, the online store",
         operation_class=_operation(None, "ModelInfo", (401, 429, 503), secured))
    async def model_info() -> Response:
        model = service.model_or_503()
        registry, b = service.registry, model.bundle
        return _json(ModelInfo(
            version=model.version,
            bundle_path=str(b.path),
            trained_on=_finite(b.trained_on),
            metrics=_finite(b.metrics),
            thresholds={"flag": model.flag_threshold, "block": model.block_threshold},
            feature_count=len(model.feature_names),
            loaded_at=model.loaded_at,
            swaps=registry.swaps,
            last_refused=_refusal_info(registry.last_refused),
            newest_promoted_refused=_refusal_info(registry.newest_refused),
            store=service.store.info(),
        ))

    @get("/healthz", summary="The process is up", operation_class=_operation(None, "Health", (), False))
    async def healthz() -> Response:
        model = service.registry.current
        return _json(Health(status="ok", model_version=model.version if model else None))

    @get("/readyz", summary="503 until a model is loaded and the online store answers",
         operation_class=_operation(None, "Health", (503,), False))
    async def readyz() -> Response:
        model = service.model_or_503()
        problem = service.store.health()
        if problem:
            raise Refused(503, problem, headers={"Retry-After": "1"})
        return _json(Health(status="ready", model_version=model.version))

    @get("/metrics", media_type="text/plain; version=0.0.4", summary="Prometheus metrics of this worker process")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    def start_serving() -> None:
        if hasattr(service.store, "freeze_gc"):
            service.store.freeze_gc = True
            if service.store.ready():
                service.store.freeze()
        if poll:
            service.registry.start(settings.poll_interval_s)

    def stop_serving() -> None:
        service.registry.stop()
        service.store.close()

    components = Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")} if secured else None)
    app = Litestar(
        route_handlers=[score_one, score_batch, call_end, model_info, healthz, readyz, metrics],
        exception_handlers={Exception: litestar_exception_handler},
        openapi_config=OpenAPIConfig(title="voicefw scoring", version="1.0.0", path="/schema", components=components),
        on_startup=[start_serving],
        on_shutdown=[stop_serving],
        debug=False,
    )
    # Litestar generates the component schemas of what it decodes; the bodies here are msgspec's
    app.openapi_schema.components.schemas.update(schemas)  # type: ignore[union-attr,arg-type]
    service.metrics.worker_pid = os.getpid()
    wrapped = MetricsMiddleware(FastPath(app, hot), service.metrics)
    wrapped.litestar = app  # type: ignore[attr-defined]
    wrapped.service = service  # type: ignore[attr-defined]
    return wrapped
