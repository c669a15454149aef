"""Prometheus at `/metrics`: the HTTP metrics of this process (middleware, one registry per app), and
the fleet's figures read from Redis at scrape time (`app.api.fleet_metrics`)."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import (
    GaugeMetricFamily,
    Metric,
)
from redis.exceptions import RedisError
from starlette.routing import Match

from app.api.fleet_metrics import read_fleet
from app.core.redis_keys import RedisKeys

# HTTP latency: v2 calls answer in milliseconds, v1 waits for the image (up to SDXL_SYNC_TIMEOUT_S).
HTTP_DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
UNMATCHED_ROUTE = "unmatched"  # every unknown path shares one label value: no cardinality blow-up
# A scrape must answer even when Redis hangs: the fleet figures are given up after this long.
REDIS_SCRAPE_TIMEOUT_S = 3.0

# ---------------------------------------------------------------------------------------------
# HTTP metrics, in-process, one registry per app


class HttpMetrics:
    """The in-process HTTP metrics of one app, registered in that app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "sdxl_http_requests_total",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "sdxl_http_request_duration_seconds",
            "Time from receiving an HTTP request to the end of its response, by method and route template.",
            ["method", "route"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=registry,
        )


# The metrics objects belong to the registry, not to a middleware instance: Starlette may build its
# middleware stack more than once, and registering the same names twice in one registry is an error.
_HTTP_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, HttpMetrics] = weakref.WeakKeyDictionary()


def http_metrics(registry: CollectorRegistry) -> HttpMetrics:
    metrics = _HTTP_METRICS.get(registry)
    if metrics is None:
        metrics = _HTTP_METRICS[registry] = HttpMetrics(registry)
    return metrics


def _route_template(scope: dict[str, Any]) -> str:
    # The router stores the matched route in the scope (also for a 405, a partial match). Its path is
    # the template (`/v2/requests/{request_id}`): raw paths would make one series per request id.
    route = scope.get("route") or _match_route(scope)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


def _match_route(scope: dict[str, Any]) -> Any:
    """The route a request was meant for when a middleware answered before the router ran (a 413
    from the body-size limit is still counted under `/v1/sdxl-img2img`, not as unmatched)."""
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return route
    return None


class RequestMetricsMiddleware:
    """Pure ASGI middleware counting HTTP requests by method, route template and status code.

    `app.add_middleware(RequestMetricsMiddleware, registry=registry)`; the same registry is given to
    `create_metrics_router`. An exception that escapes the app is counted as a 500 and re-raised.
    """

    def __init__(self, app: Callable[..., Any], registry: CollectorRegistry) -> None:
        self.app = app
        self.metrics = http_metrics(registry)

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope.get("method", "")
            route = _route_template(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.duration.labels(method, route).observe(time.perf_counter() - start)


class _Snapshot:
    """A collector over families gathered before rendering (custom collectors cannot await Redis)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


async def render_metrics(
    registry: CollectorRegistry,
    client: redis.asyncio.Redis,
    keys: RedisKeys,
    model_names: list[str],
) -> bytes:
    """The Prometheus text of one scrape: the registry's metrics plus the fleet's, read from Redis."""
    try:
        async with asyncio.timeout(REDIS_SCRAPE_TIMEOUT_S):
            fleet = await read_fleet(client, keys, model_names)
        redis_up = 1.0
    except (RedisError, OSError, TimeoutError):
        # Redis down: still answer with what this process knows, and say that Redis is down.
        fleet = []
        redis_up = 0.0
    up = GaugeMetricFamily("sdxl_redis_up", "1 when Redis answered this scrape, else 0.", value=redis_up)
    families = [*registry.collect(), up, *fleet]
    return generate_latest(_Snapshot(families))  # type: ignore[arg-type]


def create_metrics_router(
    registry: CollectorRegistry,
    get_redis: Callable[[], redis.asyncio.Redis],
    keys: RedisKeys,
    model_names: list[str],
) -> APIRouter:
    """`GET /metrics` in Prometheus text format, without a key (operators' endpoint, CONTRACT 7)."""
    router = APIRouter()
    names = list(model_names)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = await render_metrics(registry, get_redis(), keys, names)
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    return router
