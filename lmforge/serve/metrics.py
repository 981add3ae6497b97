"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide).

Counted by the HTTP middleware: requests by route, method and status; request latency by route. By the
handlers: time to first token. Read from the engine at scrape time: queue depth, running batch size and its
maximum so far, decode steps, prefilled and generated tokens, sequences by outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lmforge.serve.batching import EngineStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        if s is None:
            return
        gauges = [
            ("lmforge_queue_depth", "requests waiting for a free batch row", s.waiting),
            ("lmforge_running_batch_size", "sequences in the running batch", s.running),
            ("lmforge_max_running_batch_size", "the largest running batch so far", s.max_running),
            ("lmforge_engine_alive", "1 while the decode thread runs", int(s.alive)),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        counters = [
            ("lmforge_engine_steps", "decode steps", s.steps),
            ("lmforge_engine_step_rows", "rows over all decode steps (mean batch size = this / steps)", s.step_rows),
            ("lmforge_prefills", "prefill passes (each admits one or more sequences)", s.prefills),
            ("lmforge_prompt_tokens", "prompt tokens prefilled", s.prompt_tokens),
            ("lmforge_generated_tokens", "tokens generated", s.generated_tokens),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        outcomes = CounterMetricFamily("lmforge_sequences", "sequences by outcome", labels=["outcome"])
        for outcome in ("finished", "cancelled", "failed", "rejected"):
            outcomes.add_metric([outcome], getattr(s, outcome))
        yield outcomes


class ServerMetrics:
    def __init__(self, engine_stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lmforge_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("lmforge_request_duration_seconds", "HTTP request latency (whole response)",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.ttft = Histogram("lmforge_time_to_first_token_seconds", "request received to its first token",
                              ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.registry.register(EngineCollector(engine_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by the route that matched (its path template, so unknown paths do not
    grow the label set), method and status, and observes its latency until the last body byte."""

    def __init__(self, app: Any, metrics: ServerMetrics, known_paths: Callable[[], set[str]]) -> None:
        self.app, self.metrics, self.known_paths = app, metrics, known_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or scope.get("path", "")
            label = path if route is not None or path in self.known_paths() else "other"
            self.metrics.requests.labels(label, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
