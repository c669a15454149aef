"""/metrics against a real Redis: the middleware and router on a minimal app, `record_job` through real
sync and asyncio pipelines, heartbeats written under the real key names, then one scrape parsed with
prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.api.metrics_http import RequestMetricsMiddleware, create_metrics_router
from app.core import worker_registry
from app.core.job_metrics import record_job
from app.core.redis_keys import RedisKeys
from tests.conftest import REDIS_URL

MODELS = ["tiny", "juggernaut"]


class RejectBeforeRouting:
    """Answers 413 before the router runs, as the app's body-size limit does."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (b"x-too-large", b"1") in scope["headers"]:
            await send({"type": "http.response.start", "status": 413, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def make_app(redis_url: str, keys: RedisKeys) -> FastAPI:
    app = FastAPI()
    registry = CollectorRegistry()
    app.add_middleware(RejectBeforeRouting)
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    clients: list[redis.asyncio.Redis] = []

    def get_redis() -> redis.asyncio.Redis:
        # One client per event loop: TestClient runs each request on its own loop.
        client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        clients.append(client)
        return client

    app.include_router(create_metrics_router(registry, get_redis, keys, MODELS))

    @app.get("/v2/requests/{request_id}/status")
    async def status(request_id: str) -> dict[str, str]:
        if request_id == "missing":
            raise HTTPException(404, "nope")
        return {"request_id": request_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("unexpected")

    return app


def scrape(client: TestClient) -> dict[str, dict[tuple, float]]:
    """name -> {(sample name, sorted labels): value}"""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrape_reports_every_metric(redis_prefix: str, redis_client: redis.Redis) -> None:
    keys = RedisKeys(redis_prefix)
    # Jobs ended: two on tiny through a sync pipeline (as the worker does), one through asyncio.
    pipe = redis_client.pipeline()
    record_job(pipe, keys, base_model="tiny", status="COMPLETED", queue_time_s=0.2, inference_time_s=1.5)
    record_job(pipe, keys, base_model="tiny", status="COMPLETED", queue_time_s=12.0, inference_time_s=4000.0)
    record_job(pipe, keys, base_model="tiny", status="FAILED", queue_time_s=0.01, inference_time_s=None)
    pipe.execute()

    async def async_record() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        async with client.pipeline(transaction=True) as apipe:
            record_job(
                apipe,
                keys,
                base_model="juggernaut",
                status="COMPLETED",
                queue_time_s=3.0,
                inference_time_s=6.0,
            )
            await apipe.execute()
        await client.aclose()

    asyncio.run(async_record())

    # Three queued jobs for tiny (rq's list of job ids), none for juggernaut.
    redis_client.rpush(keys.rq_queue_key("tiny"), "a", "b", "c")
    # Two live workers, one on a GPU; a third heartbeat that is not JSON still counts as alive.
    redis_client.set(
        keys.worker("gpu-box:0"), json.dumps({"id": "gpu-box:0", "gpu_memory_bytes": 7_500_000_000}), ex=30
    )
    redis_client.set(
        keys.worker("cpu-box:1"), json.dumps({"id": "cpu-box:1", "gpu_memory_bytes": None}), ex=30
    )
    # ...in the registry of live workers, as each heartbeat puts them (/metrics never scans).
    for worker_id in ("gpu-box:0", "cpu-box:1"):
        worker_registry.register(redis_client, keys, worker_id, ["tiny"], ttl_s=30)

    with TestClient(make_app(REDIS_URL, keys), raise_server_exceptions=False) as client:
        assert client.get("/v2/requests/abc/status").status_code == 200
        assert client.get("/v2/requests/def/status").status_code == 200
        assert client.get("/v2/requests/missing/status").status_code == 404
        assert client.post("/v2/requests/abc/status").status_code == 405
        assert client.get("/no/such/path/123").status_code == 404
        assert client.get("/boom").status_code == 500
        assert client.get("/v2/requests/big/status", headers={"x-too-large": "1"}).status_code == 413
        m = scrape(client)

    requests = m["sdxl_http_requests"]
    status_route = "/v2/requests/{request_id}/status"

    def req(method: str, route: str, status: str) -> float:
        key = ("sdxl_http_requests_total", (("method", method), ("route", route), ("status", status)))
        return requests.get(key, 0.0)

    assert req("GET", status_route, "200") == 2
    assert req("GET", status_route, "404") == 1
    assert req("POST", status_route, "405") == 1
    assert req("GET", "unmatched", "404") == 1
    assert req("GET", "/boom", "500") == 1
    assert req("GET", status_route, "413") == 1  # answered before routing, still under its route
    # Never a raw path as a label value.
    assert not any("abc" in str(labels) or "123" in str(labels) for _, labels in requests)

    duration = m["sdxl_http_request_duration_seconds"]
    count_key = ("sdxl_http_request_duration_seconds_count", (("method", "GET"), ("route", status_route)))
    assert duration[count_key] == 4

    assert m["sdxl_redis_up"][("sdxl_redis_up", ())] == 1
    depth = m["sdxl_queue_depth"]
    assert depth[("sdxl_queue_depth", (("model", "tiny"),))] == 3
    assert depth[("sdxl_queue_depth", (("model", "juggernaut"),))] == 0
    assert m["sdxl_workers_alive"][("sdxl_workers_alive", ())] == 2
    gpu = m["sdxl_worker_gpu_memory_bytes"]
    assert gpu == {("sdxl_worker_gpu_memory_bytes", (("worker", "gpu-box:0"),)): 7_500_000_000}

    qt = m["sdxl_job_queue_time_seconds"]

    def bucket(family: dict, name: str, model: str, le: str) -> float:
        return family[(f"{name}_bucket", (("le", le), ("model", model)))]

    name = "sdxl_job_queue_time_seconds"
    assert bucket(qt, name, "tiny", "0.05") == 1  # 0.01
    assert bucket(qt, name, "tiny", "0.25") == 2  # + 0.2
    assert bucket(qt, name, "tiny", "10.0") == 2
    assert bucket(qt, name, "tiny", "30.0") == 3  # + 12
    assert bucket(qt, name, "tiny", "+Inf") == 3
    assert qt[(f"{name}_count", (("model", "tiny"),))] == 3
    assert qt[(f"{name}_sum", (("model", "tiny"),))] == pytest.approx(12.21)
    assert bucket(qt, name, "juggernaut", "2.5") == 0
    assert bucket(qt, name, "juggernaut", "5.0") == 1

    it = m["sdxl_job_inference_time_seconds"]
    name = "sdxl_job_inference_time_seconds"
    assert bucket(it, name, "tiny", "2.0") == 1
    assert bucket(it, name, "tiny", "300.0") == 1  # 4000 s is above every bound...
    assert bucket(it, name, "tiny", "+Inf") == 2  # ...and counted in +Inf only
    assert it[(f"{name}_sum", (("model", "tiny"),))] == pytest.approx(4001.5)
    assert bucket(it, name, "juggernaut", "7.5") == 1

    jobs = m["sdxl_jobs"]
    assert jobs[("sdxl_jobs_total", (("model", "tiny"), ("status", "COMPLETED")))] == 2
    assert jobs[("sdxl_jobs_total", (("model", "tiny"), ("status", "FAILED")))] == 1
    assert jobs[("sdxl_jobs_total", (("model", "juggernaut"), ("status", "COMPLETED")))] == 1


def test_scrape_answers_when_redis_is_down(redis_prefix: str) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    app = make_app("redis://127.0.0.1:1/0", RedisKeys(redis_prefix))
    with TestClient(app) as client:
        assert client.get("/v2/requests/x/status").status_code == 200
        m = scrape(client)
    assert m["sdxl_redis_up"][("sdxl_redis_up", ())] == 0
    assert "sdxl_queue_depth" not in m
    key = (
        "sdxl_http_requests_total",
        (("method", "GET"), ("route", "/v2/requests/{request_id}/status"), ("status", "200")),
    )
    assert m["sdxl_http_requests"][key] == 1


def test_apps_have_separate_registries(redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix)
    with TestClient(make_app(REDIS_URL, keys)) as first, TestClient(make_app(REDIS_URL, keys)) as second:
        first.get("/v2/requests/a/status")
        m = scrape(second)
    route_key = (
        "sdxl_http_requests_total",
        (("method", "GET"), ("route", "/v2/requests/{request_id}/status"), ("status", "200")),
    )
    assert route_key not in m.get("sdxl_http_requests", {})
