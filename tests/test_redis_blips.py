"""Short Redis outages under a v1 wait, and a Redis restart under pooled connections (issue 10,
items 3 and 14), on a PRIVATE redis-server (never the shared one): a v1 request waits through a
short outage and answers its image; one whose wait ends while Redis is still down answers 502 with
its `x-request-id`; after a restart, no call fails on a stale pooled connection."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults import absent_worker, report, slow_job, wait_until
from tests.private_redis import PrivateRedis, running_private_redis
from tests.stack import Stack, make_stack
from tests.test_hardening_redis import FAST, SLUG

pytestmark = pytest.mark.e2e


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    yield from running_private_redis()


def stack_on(private_redis: PrivateRedis, **env: str) -> Stack:
    stack = make_stack(SDXL_AUTH="disabled", REDIS_URL=private_redis.url, SDXL_JOB_LOST_S="60", **env)
    stack.start_api()
    return stack


def requests_in(stack: Stack) -> list[str]:
    """The requests written (a reservation alone has no status yet)."""
    client = stack.redis()
    found = [key for key in client.scan_iter(f"{stack.prefix}:req:*") if client.hexists(key, "status")]
    return [key.decode().rsplit(":", 1)[1] for key in found]


def v1_in_thread(stack: Stack, body: dict) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def call() -> None:
        answer["response"] = httpx.post(f"{stack.base_url}/v1/{SLUG}", json=body, timeout=120)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, answer


def test_v1_waits_through_a_short_redis_outage(private_redis):
    stack = stack_on(private_redis, SDXL_SYNC_TIMEOUT_S="60")
    try:
        stack.start_worker()
        thread, answer = v1_in_thread(stack, slow_job(128, steps=40))
        wait_until(lambda: requests_in(stack), 30, "the request to be submitted")
        private_redis.signal(signal.SIGSTOP)
        time.sleep(3)  # past the 1.5 s socket timeout: the waiter's BLPOP fails
        private_redis.signal(signal.SIGCONT)
        resumed = time.monotonic()
        thread.join(timeout=90)
        response = answer["response"]
        report("Redis hung 3 s under a v1 wait", response.status_code, time.monotonic() - resumed)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["x-request-id"] == requests_in(stack)[0]
    finally:
        private_redis.signal(signal.SIGCONT)
        stack.stop()


def test_v1_whose_wait_ends_while_redis_is_down_answers_502_with_its_request_id(private_redis):
    stack = stack_on(private_redis, SDXL_SYNC_TIMEOUT_S="2")
    try:
        absent_worker(stack)  # served by none that takes it: the request stays QUEUED
        thread, answer = v1_in_thread(stack, FAST)
        [request_id] = wait_until(lambda: requests_in(stack), 30, "the request to be submitted")
        private_redis.signal(signal.SIGSTOP)
        thread.join(timeout=30)
        private_redis.signal(signal.SIGCONT)
        response = answer["response"]
        assert response.status_code == 502 and response.json() == {"error": "Service temporarily unavailable"}
        assert response.headers["x-request-id"] == request_id
        # The id names a real request the client can look at, or cancel.
        status = httpx.get(f"{stack.base_url}/v2/requests/{request_id}/status", timeout=10)
        assert status.status_code == 200 and status.json()["status"] == "QUEUED"
        assert httpx.delete(f"{stack.base_url}/v2/requests/{request_id}", timeout=10).status_code == 202
    finally:
        private_redis.signal(signal.SIGCONT)
        stack.stop()


def test_no_call_fails_on_a_stale_pooled_connection_after_a_redis_restart(private_redis):
    stack = stack_on(private_redis)
    try:
        unknown = f"/v2/requests/{uuid.uuid4()}/status"
        with ThreadPoolExecutor(16) as pool:
            # Fill the API's pool with connections, then restart Redis under them.
            assert set(pool.map(lambda _: httpx.get(stack.base_url + unknown).status_code, range(32))) == {
                404
            }
            private_redis.stop(signal.SIGKILL)
            private_redis.start()
            codes = list(pool.map(lambda _: httpx.get(stack.base_url + unknown).status_code, range(64)))
        assert codes.count(502) == 0, f"{codes.count(502)} calls failed on stale connections"
        assert set(codes) == {404}
        submitted = httpx.post(f"{stack.base_url}/v2/{SLUG}", json=FAST, timeout=30)
        assert submitted.status_code == 200, submitted.text
    finally:
        stack.stop()
