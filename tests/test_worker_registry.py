"""The registry of live workers (app/core/worker_registry.py): a real worker subprocess registers
with the models it serves; SIGKILLed, it leaves within its heartbeat's TTL; /readyz, /metrics and
the worker container's healthcheck read it, and none of them scans the keyspace."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from app.core import worker_registry
from tests.faults import HEARTBEAT_TTL_S, JOB_LOST_S, kill_worker, wait_until
from tests.stack import make_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    stack = make_stack(SDXL_JOB_LOST_S=str(JOB_LOST_S))
    stack.start_api()
    yield stack
    stack.stop()


def readyz(stack) -> httpx.Response:
    return httpx.get(stack.base_url + "/readyz", timeout=10)


def test_registry_follows_a_real_worker(stack):
    client = stack.redis()
    assert readyz(stack).status_code == 503, "no worker yet"
    stack.start_worker("tiny")
    [worker_id] = worker_registry.live_workers(client, stack.keys)
    assert worker_registry.live_workers_serving(client, stack.keys, "tiny") == [worker_id]
    assert worker_registry.live_workers_serving(client, stack.keys, "juggernaut") == []
    # Scored by when its heartbeat expires, within one TTL from now (Redis's clock).
    [(_, expires_ms)] = client.zrange(stack.keys.live_workers, 0, -1, withscores=True)
    now_ms = client.time()[0] * 1000
    assert now_ms < expires_ms <= now_ms + HEARTBEAT_TTL_S * 1000 + 1000
    assert client.pttl(stack.keys.live_workers) > 0, "the registry itself expires with the fleet"
    body = readyz(stack).json()
    assert body == {"status": "ok", "workers": 1}
    metrics = httpx.get(stack.base_url + "/metrics", timeout=10).text
    assert "sdxl_workers_alive 1.0" in metrics

    killed_at = kill_worker(stack, worker_id)
    wait_until(
        lambda: worker_registry.live_workers(client, stack.keys) == [],
        HEARTBEAT_TTL_S + 5,
        "the killed worker to leave the registry",
    )
    assert time.monotonic() - killed_at <= HEARTBEAT_TTL_S + 5
    assert worker_registry.live_workers_serving(client, stack.keys, "tiny") == []
    assert readyz(stack).status_code == 503
    assert "sdxl_workers_alive 0.0" in httpx.get(stack.base_url + "/metrics", timeout=10).text


def test_a_stopped_worker_leaves_at_once(stack):
    process = stack.start_worker("tiny")
    assert len(worker_registry.live_workers(stack.redis(), stack.keys)) == 1
    process.terminate()
    process.wait(timeout=60)
    assert worker_registry.live_workers(stack.redis(), stack.keys) == [], "SIGTERM unregisters"


def test_host_healthcheck_reads_the_registry(stack):
    """The worker container's HEALTHCHECK command (Dockerfile, docker-compose.yml), run as written."""
    command = [
        sys.executable,
        "-c",
        "from app.core.worker_registry import healthcheck; raise SystemExit(healthcheck())",
    ]
    env = {**stack.env}
    assert subprocess.run(command, env=env, timeout=60).returncode == 1, "no worker of this host"
    stack.start_worker("tiny")
    assert subprocess.run(command, env=env, timeout=60).returncode == 0
    client = stack.redis()
    assert worker_registry.host_has_live_worker(client, stack.keys, socket.gethostname())
    assert not worker_registry.host_has_live_worker(client, stack.keys, "another-host")
    for process in stack.workers:
        process.terminate()
        process.wait(timeout=60)


def test_readers_never_scan(stack):
    """/readyz and /metrics: MONITOR sees the registry read and no SCAN (nor KEYS) of this stack's
    keys (the Redis is shared with other tests, whose commands are left out by the prefix)."""
    client = stack.redis()
    with client.monitor() as monitor:
        readyz(stack)
        httpx.get(stack.base_url + "/metrics", timeout=10)
        client.set(f"{stack.prefix}:monitor-end", 1, ex=10)
        ours = []
        for event in monitor.listen():
            if stack.prefix in event["command"]:
                ours.append(event["command"])
            if f"{stack.prefix}:monitor-end" in event["command"]:
                break
    assert any(stack.keys.live_workers in c for c in ours), "the registry was read"
    assert not [c for c in ours if c.split()[0].upper() in ("SCAN", "KEYS")]


def test_async_client_reads_the_same(stack):
    import asyncio

    import redis.asyncio as aioredis

    async def read() -> list[str]:
        aio = aioredis.Redis.from_url(stack.env["REDIS_URL"])
        try:
            return await worker_registry.live_workers(aio, stack.keys)
        finally:
            await aio.aclose()

    stack.start_worker("tiny")
    names = asyncio.run(read())
    assert len(names) == 1 and names == worker_registry.live_workers(stack.redis(), stack.keys)
