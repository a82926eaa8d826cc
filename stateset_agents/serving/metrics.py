"""Prometheus metrics of the service (``GET /metrics``, text format), in the app's own registry.

==============================================  =========  =====================================================
name                                            type       what
==============================================  =========  =====================================================
``stateset_http_requests_total``                counter    requests by ``method``, ``route`` (template), ``status``
``stateset_http_request_duration_seconds``      histogram  request latency by ``route``, to the last body byte
``stateset_chat_time_to_first_token_seconds``   histogram  streamed chat completions: request to first content
``stateset_engine_new_tokens_total``            counter    tokens sampled by the engine (all endpoints)
``stateset_engine_new_tokens_per_second``       gauge      the engine's new tokens/s over the last 10 s
``stateset_engine_requests_total``              counter    generations submitted to the engine
``stateset_engine_decode_steps_total``          counter    batched decode steps
``stateset_engine_batch_size``                  gauge      sequences being decoded now
``stateset_engine_waiting_requests``            gauge      generations queued for admission
``stateset_engine_max_batch_size``              gauge      the largest batch decoded so far
``stateset_inflight_generations``               gauge      generations admitted by the service (``max_pending``)
``stateset_jobs_active``                        gauge      training jobs running
==============================================  =========  =====================================================

Routes are labelled by their template (``/api/conversations/{conversation_id}``), and unknown paths as
``unmatched``, so the label set stays bounded.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.routing import Match

__all__ = ["MetricsMiddleware", "ServiceMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class TokenRate:
    """New tokens per second over a sliding window, from samples of a monotonic counter."""

    def __init__(self, read: Callable[[], int], window_s: float = 10.0) -> None:
        self.read, self.window_s = read, window_s
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self) -> float:
        now = time.monotonic()
        self.samples.append((now, self.read()))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class _EngineCollector:
    def __init__(self, service: Any) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        s = self.service
        engine = getattr(getattr(s, "model", None), "engine", None)
        if engine is not None:
            st = engine.stats
            for name, value, doc in (("new_tokens", st.new_tokens, "tokens sampled by the engine"),
                                     ("requests", st.requests, "generations submitted to the engine"),
                                     ("decode_steps", st.decode_steps, "batched decode steps")):
                yield CounterMetricFamily(f"stateset_engine_{name}", doc, value=value)
            for name, value, doc in (
                    ("new_tokens_per_second", s.token_rate.sample(), "new tokens/s over the last 10 s"),
                    ("batch_size", engine.batch_size, "sequences being decoded now"),
                    ("waiting_requests", engine.waiting, "generations queued for admission"),
                    ("max_batch_size", st.max_batch, "largest batch decoded so far")):
                yield GaugeMetricFamily(f"stateset_engine_{name}", doc, value=value)
        yield GaugeMetricFamily("stateset_inflight_generations", "generations admitted by the service",
                                value=s.inflight)
        yield GaugeMetricFamily("stateset_jobs_active", "training jobs running", value=s.active_jobs())


class ServiceMetrics:
    """The registry and the metrics the service updates."""

    def __init__(self, service: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("stateset_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("stateset_http_request_duration_seconds", "request latency to the last body byte",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("stateset_chat_time_to_first_token_seconds", "streamed chat: time to first content",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(service))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request and times it until its last body byte is sent (streams included)."""

    def __init__(self, app: Any, metrics: Callable[[], ServiceMetrics | None], routes: Callable[[], list[Any]]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route(self, scope: dict[str, Any]) -> str:
        for r in self.routes():
            match, _ = r.matches(scope)
            if match == Match.FULL:
                return getattr(r, "path", "unmatched")
        return "unmatched"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        metrics = self.metrics()
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        done = {"v": False}

        def record(code: str) -> None:
            done["v"] = True
            route = self._route(scope)
            metrics.requests.labels(scope["method"], route, code).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - start)

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not done["v"]:
                record(str(status["code"]))

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not done["v"]:  # the client went away before the last byte (or the app failed)
                record("499" if status["code"] < 400 else str(status["code"]))
