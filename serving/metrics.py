"""Prometheus metrics of one service process, in their own registry (one per app, so tests can
build several apps in one process). With several workers each process reports its own series,
labelled by `voicefw_worker{pid}`; a scrape reaches one worker (sum over scrapes by pid).

The request path only adds to plain ints and lists (no locks, no label lookups: prometheus_client's
Counter.inc / Histogram.observe cost ~2 µs each and a request made five of them); a collector turns
them into metric families when /metrics is scraped. Counts are written on the event loop, and the
swap/refusal counts by the model poller thread, each by one thread only.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

ENDPOINTS = ("/v1/score", "/v1/score/batch", "/v1/calls/end", "/v1/model", "/healthz", "/readyz", "/metrics")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
DECISIONS = ("allow", "flag", "block")


class ServiceMetrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        # per endpoint: requests per latency bucket (last = above the largest bound), and total seconds
        self.latency = {e: [0] * (len(LATENCY_BUCKETS) + 1) for e in ENDPOINTS + ("other",)}
        self.latency_sum = dict.fromkeys(self.latency, 0.0)
        self.decisions = dict.fromkeys(DECISIONS, 0)
        self.calls_scored = 0
        self.call_ends = 0
        self.swaps = 0
        self.refusals = 0
        self.model_version: str | None = None
        self.store_errors = 0  # requests answered 503 because the online store failed
        self.store = None  # the HistoryStore (kind, health)
        self.registry = None  # the ModelRegistry (is the newest promoted bundle refused?)
        self.worker_pid: int | None = None
        self._prometheus = CollectorRegistry()
        self._prometheus.register(self)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency[endpoint][bisect_left(LATENCY_BUCKETS, seconds)] += 1  # bucket bounds are inclusive (le)
        self.latency_sum[endpoint] += seconds

    def count_decision(self, decision: str, n: int = 1) -> None:
        self.decisions[decision] += n

    def set_model(self, version: str) -> None:
        self.model_version = version
        self.swaps += 1

    def collect(self):
        """prometheus_client collector protocol: the current values as metric families."""
        requests = CounterMetricFamily("voicefw_requests", "HTTP requests by endpoint and status", labels=["endpoint", "status"])
        for (endpoint, status), n in list(self.requests.items()):
            requests.add_metric([endpoint, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("voicefw_request_latency_seconds", "Time in the service per request", labels=["endpoint"])
        for endpoint, counts in self.latency.items():
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            latency.add_metric([endpoint], buckets, self.latency_sum[endpoint])
        yield latency
        decisions = CounterMetricFamily("voicefw_decisions", "Scoring decisions", labels=["decision"])
        for d, n in self.decisions.items():
            decisions.add_metric([d], n)
        yield decisions
        yield CounterMetricFamily("voicefw_calls_scored", "Calls scored (single and batch)", value=self.calls_scored)
        yield CounterMetricFamily("voicefw_call_ends", "Call-end events fed to the online history", value=self.call_ends)
        info = GaugeMetricFamily("voicefw_model_info", "1 for the version being served", labels=["version"])
        if self.model_version is not None:
            info.add_metric([self.model_version], 1)
        yield info
        yield CounterMetricFamily("voicefw_model_swaps", "Models installed (first load included)", value=self.swaps)
        yield CounterMetricFamily("voicefw_model_refusals", "Bundles refused (checksum, load or golden rows)",
                                  value=self.refusals)
        newest_refused = getattr(self.registry, "newest_refused", None)
        yield GaugeMetricFamily("voicefw_model_fallback", "1 while the newest promoted bundle is refused and an older "
                                "one serves", value=int(newest_refused is not None and self.model_version is not None))
        if self.store is not None:
            up = GaugeMetricFamily("voicefw_store_up", "1 when the online store answers and is seeded", labels=["kind"])
            up.add_metric([self.store.kind], int(self.store.health() is None))
            yield up
        yield CounterMetricFamily("voicefw_store_errors", "Requests answered 503 because the online store failed",
                                  value=self.store_errors)
        worker = GaugeMetricFamily("voicefw_worker", "The worker process answering this scrape", labels=["pid"])
        if self.worker_pid is not None:
            worker.add_metric([str(self.worker_pid)], 1)
        yield worker

    def render(self) -> bytes:
        return generate_latest(self._prometheus)


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
