"""Prometheus metrics of one service process, in their own registry (one per app, so tests can
build several apps in one process). With several workers each process reports its own series."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENDPOINTS = ("/v1/score", "/v1/score/batch", "/v1/calls/end", "/v1/model", "/healthz", "/readyz", "/metrics")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("voicefw_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "voicefw_request_latency_seconds", "Time in the service per request", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.decisions = Counter("voicefw_decisions", "Scoring decisions", ["decision"], registry=r)
        self.calls_scored = Counter("voicefw_calls_scored", "Calls scored (single and batch)", registry=r)
        self.call_ends = Counter("voicefw_call_ends", "Call-end events fed to the online history", registry=r)
        self.model_info = Gauge("voicefw_model_info", "1 for the version being served", ["version"], registry=r)
        self.swaps = Counter("voicefw_model_swaps", "Models installed (first load included)", registry=r)
        self.refusals = Counter("voicefw_model_refusals", "Bundles refused (checksum, load or golden rows)", registry=r)
        # children bound once: label lookups are the costly part of a counter increment
        self._latency = {e: self.latency.labels(e) for e in ENDPOINTS + ("other",)}
        self._decision = {d: self.decisions.labels(d) for d in ("allow", "flag", "block")}
        self._requests: dict[tuple[str, int], object] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(endpoint, str(status))
        child.inc()
        self._latency[endpoint].observe(seconds)

    def count_decision(self, decision: str, n: int = 1) -> None:
        self._decision[decision].inc(n)

    def set_model(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version).set(1)
        self.swaps.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: status and wall time of every HTTP request (cheaper than a Litestar one)."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        start = time.perf_counter()

        async def send_with_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)
