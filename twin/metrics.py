"""Prometheus metrics of the server: requests, latency, tile cache hits, worker restarts.

Each app owns its registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The server's counters and histograms, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "twin_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "twin_http_request_duration_seconds",
            "Time from request to the last byte of the answer, by route template.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.tile_cache = Counter(
            "twin_tile_cache_lookups",
            "Vector tile cache lookups, by result (hit or miss).",
            ["result"],
            registry=self.registry,
        )

    def watch_workers(self, restarts: Callable[[], int], live: Callable[[], int]) -> None:
        """Report the worker processes of a `twin serve --workers` server, read at scrape
        time from the figures the supervising process keeps (`twin.server`)."""
        self.registry.register(WorkerPoolCollector(restarts, live))

    def render(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)


class WorkerPoolCollector:
    """The worker pool's figures, which its supervising process keeps (the same in every
    worker)."""

    def __init__(self, restarts: Callable[[], int], live: Callable[[], int]) -> None:
        self._restarts = restarts
        self._live = live

    def collect(self) -> Iterator[Metric]:
        """The current figures as Prometheus metric families."""
        yield CounterMetricFamily(
            "twin_worker_restarts",
            "Worker processes started in place of ones that died, since the server started.",
            value=self._restarts(),
        )
        yield GaugeMetricFamily(
            "twin_workers", "Worker processes of this server alive now.", value=self._live()
        )


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request by its route template (not its raw path)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # The labelled series, found once (prometheus_client's `labels` costs more than the
        # increment): by (route, method, status), and by route.
        self._counts: dict[tuple[str, str, int], Any] = {}
        self._times: dict[str, Any] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template is None:
                # Plain Starlette routes (/api, /api.html) set no route; unknown paths (404)
                # stay one label so they cannot grow the label set.
                template = scope["path"] if status[0] < 400 else "unmatched"
            key = (template, scope["method"], status[0])
            count = self._counts.get(key)
            if count is None:
                count = self._counts[key] = self.metrics.requests.labels(
                    template, key[1], str(key[2])
                )
            count.inc()
            timer = self._times.get(template)
            if timer is None:
                timer = self._times[template] = self.metrics.latency.labels(template)
            timer.observe(time.perf_counter() - start)
