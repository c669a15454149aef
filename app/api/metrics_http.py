"""Prometheus at `/metrics`: the HTTP metrics of this process, and the fleet's job, queue and worker
figures read back from Redis at scrape time (written there by `app.core.job_metrics`)."""

from __future__ import annotations

import asyncio
import json
import math
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis.asyncio
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError
from starlette.routing import Match

from app.core import worker_registry
from app.core.job_metrics import (
    _SEP,
    INFERENCE_TIME,
    INFERENCE_TIME_BUCKETS,
    JOBS,
    QUEUE_TIME,
    QUEUE_TIME_BUCKETS,
    WEBHOOKS,
)
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


# ---------------------------------------------------------------------------------------------
# Fleet metrics, read from Redis at scrape time


def _split(field: bytes | str) -> tuple[str, str]:
    text = field.decode() if isinstance(field, bytes) else field
    model, _, tail = text.rpartition(_SEP)
    return model, tail


def _histogram_family(
    name: str,
    documentation: str,
    raw: dict[Any, Any],
    buckets: tuple[float, ...],
    model_names: Iterable[str],
) -> HistogramMetricFamily:
    per_model: dict[str, dict[str, float]] = {m: {} for m in model_names}
    for field, value in raw.items():
        model, tail = _split(field)
        per_model.setdefault(model, {})[tail] = float(value)
    family = HistogramMetricFamily(name, documentation, labels=["model"])
    for model, fields in per_model.items():
        cumulative = 0.0
        series: list[tuple[str, float]] = []
        for bound in buckets:
            label = floatToGoString(bound)
            cumulative += fields.get(label, 0.0)
            series.append((label, cumulative))
        series.append(("+Inf", fields.get("count", cumulative + fields.get("+Inf", 0.0))))
        family.add_metric([model], series, sum_value=fields.get("sum", 0.0))
    return family


async def _read_fleet(client: redis.asyncio.Redis, keys: RedisKeys, model_names: list[str]) -> list[Metric]:
    """Everything the scrape reads from Redis; raises RedisError (or TimeoutError) when it cannot."""
    pipe = client.pipeline(transaction=False)
    for model in model_names:
        pipe.llen(keys.rq_queue_key(model))
    pipe.hgetall(keys.metrics(QUEUE_TIME))
    pipe.hgetall(keys.metrics(INFERENCE_TIME))
    pipe.hgetall(keys.metrics(JOBS))
    pipe.hgetall(keys.metrics(WEBHOOKS))
    results = await pipe.execute()
    depths = results[: len(model_names)]
    queue_raw, inference_raw, jobs_raw, webhooks_raw = results[len(model_names) :]

    # The registry of live workers, then their heartbeats' details: O(workers), no keyspace scan.
    worker_ids = await worker_registry.live_workers(client, keys)
    values = await client.mget([keys.worker(w) for w in worker_ids]) if worker_ids else []

    families: list[Metric] = []
    depth = GaugeMetricFamily(
        "sdxl_queue_depth", "Requests waiting in the queue, by base model.", labels=["model"]
    )
    for model, n in zip(model_names, depths, strict=True):
        depth.add_metric([model], float(n))
    families.append(depth)

    # A heartbeat expires with its worker: one that expired between the two reads is not counted.
    alive = [(w, v) for w, v in zip(worker_ids, values, strict=True) if v is not None]
    families.append(
        GaugeMetricFamily("sdxl_workers_alive", "Workers whose heartbeat is alive.", value=len(alive))
    )
    gpu = GaugeMetricFamily(
        "sdxl_worker_gpu_memory_bytes",
        "GPU memory allocated by each live worker (workers on a CPU report none).",
        labels=["worker"],
    )
    for worker_id, raw in alive:
        try:
            beat = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if not isinstance(beat, dict):
            continue
        memory = beat.get("gpu_memory_bytes")
        if isinstance(memory, int | float) and not isinstance(memory, bool) and math.isfinite(memory):
            gpu.add_metric([worker_id], float(memory))
    families.append(gpu)

    families.append(
        _histogram_family(
            "sdxl_job_queue_time_seconds",
            "Time a request waited in the queue before a worker started it, by base model.",
            queue_raw,
            QUEUE_TIME_BUCKETS,
            model_names,
        )
    )
    families.append(
        _histogram_family(
            "sdxl_job_inference_time_seconds",
            "Time a worker spent generating a request (all its samples), by base model.",
            inference_raw,
            INFERENCE_TIME_BUCKETS,
            model_names,
        )
    )
    jobs = CounterMetricFamily(
        "sdxl_jobs", "Requests ended, by base model and final status.", labels=["model", "status"]
    )
    for field, value in sorted(jobs_raw.items()):
        model, status = _split(field)
        jobs.add_metric([model, status], float(value))
    families.append(jobs)
    webhooks = CounterMetricFamily(
        "sdxl_webhooks", "Webhook delivery attempts, by outcome.", labels=["outcome"]
    )
    for field, value in sorted(webhooks_raw.items()):
        webhooks.add_metric([field.decode() if isinstance(field, bytes) else field], float(value))
    families.append(webhooks)
    return families


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
            fleet = await _read_fleet(client, keys, model_names)
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
