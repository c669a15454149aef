"""A worker that reaches its first heartbeat while Redis is down (a supervisor restarts both at once;
found by the chaos run, tests/test_chaos.py: a restarted worker exited 1 on a Redis killed during its
start) waits for Redis and then serves, as a running worker does through an outage."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faults import wait_until
from tests.private_redis import PrivateRedis
from tests.stack import LOG_DIR, make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e


def worker_log(prefix: str) -> str:
    return "".join(path.read_text() for path in LOG_DIR.glob(f"{prefix}-worker-*.log"))


def test_a_worker_started_while_redis_is_down_waits_for_it_then_serves():
    durable = PrivateRedis(durable=True)
    durable.start()
    stack = make_stack(REDIS_URL=durable.url, SDXL_AUTH="disabled")
    try:
        stack.start_api()
        worker = stack.start_worker(wait=False)
        durable.kill()  # before the worker's imports and warm-up are done: its first beat meets no Redis
        wait_until(
            lambda: "waiting for it" in worker_log(stack.prefix) or worker.poll() is not None,
            120,
            "the worker to reach its first heartbeat",
        )
        time.sleep(2)
        assert worker.poll() is None, f"the worker exited with code {worker.returncode}"
        durable.start()
        stack.wait_for(lambda: stack.live_workers() == 1, "the worker to announce itself", timeout=30)
        response = httpx.post(
            f"{stack.base_url}/v1/{SLUG}", json={"image": IMAGE, "prompt": "p", **FAST}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert worker.poll() is None
    finally:
        if durable.process.poll() is not None:
            durable.start()  # stack.stop cleans its keys up in Redis
        stack.stop()
        durable.close()
