"""/metrics in Prometheus' text format: requests, errors and latency per route, plus the service's counters.

Each gunicorn worker counts its own requests; set PROMETHEUS_MULTIPROC_DIR (an empty folder shared by the
workers, as prometheus-client documents) to add them up across workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("backend_requests", "HTTP requests by route, method and status", ["route", "method", "status"],
                   registry=REGISTRY)
ERRORS = Counter("backend_request_errors", "HTTP requests answered with 4xx/5xx, by route and status",
                 ["route", "status"], registry=REGISTRY)
LATENCY = Histogram("backend_request_duration_seconds", "HTTP request latency by route", ["route"],
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def observe(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    LATENCY.labels(route).observe(seconds)
    if status >= 400:
        ERRORS.labels(route, str(status)).inc()


class _ServiceCounters:
    """The service's own counters (encoder and decoder runs, fit events, ...) as Prometheus counters."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def collect(self):
        counts = self.snapshot()
        runs = CounterMetricFamily("backend_events", "Backend events (encoder_runs, decoder_runs, ...)",
                                   labels=["event"])
        seconds = CounterMetricFamily("backend_event_seconds", "Seconds spent in backend events", labels=["event"])
        for name, value in counts.get("counts", {}).items():
            runs.add_metric([name], value)
        for name, value in counts.get("seconds", {}).items():
            seconds.add_metric([name], value)
        yield runs
        yield seconds


def exposition(service_counters: Callable[[], dict] | None = None) -> bytes:
    """The metrics page: this process's (or, with PROMETHEUS_MULTIPROC_DIR, every worker's) metrics."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    page = generate_latest(registry)
    if service_counters is not None:
        extra = CollectorRegistry()
        extra.register(_ServiceCounters(service_counters))
        page += generate_latest(extra)
    return page
