"""Nothing waits for ever and nothing is kept for ever (issue 10, items 4 and 14): a request still
QUEUED past SDXL_MAX_QUEUE_TIME_S ends FAILED "expired in queue", refunded; every key of a request
expires, RQ's job hash included, and a worker killed mid-job leaves RQ's registries."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.faults import (
    HEARTBEAT_TTL_S,
    JOB_LOST_S,
    balance,
    heartbeat,
    report,
    running_worker,
    slow_job,
    wait_until,
)
from tests.stack import start_full_stack
from tests.test_e2e_api import IMAGE, SLUG

pytestmark = pytest.mark.e2e
MAX_QUEUE_TIME_S = 3
RESULT_TTL_S = 600


@pytest.fixture
def stack(tmp_path):
    stack = start_full_stack(
        tmp_path,
        SDXL_JOB_LOST_S=str(JOB_LOST_S),
        SDXL_MAX_QUEUE_TIME_S=str(MAX_QUEUE_TIME_S),
        SDXL_RESULT_TTL_S=str(RESULT_TTL_S),
    )
    yield stack
    stack.stop()


def submit(stack, key: str, body: dict) -> str:
    response = httpx.post(f"{stack.base_url}/v2/{SLUG}", json=body, headers={"x-api-key": key}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def status(stack, key: str, request_id: str) -> dict:
    url = f"{stack.base_url}/v2/requests/{request_id}/status"
    return httpx.get(url, headers={"x-api-key": key}, timeout=10).json()


def request_keys(stack, request_id: str) -> list[str]:
    client = stack.redis()
    found = [k.decode() for k in client.scan_iter(f"{stack.prefix}:*{request_id}*")]
    return found + ([f"rq:job:{request_id}"] if client.exists(f"rq:job:{request_id}") else [])


def test_a_request_queued_too_long_ends_failed_expired_in_queue_refunded(stack):
    key = stack.create_key(name="expiry", credits=10)
    request_id = submit(stack, key, {"image": IMAGE, "prompt": "p", "base_model": "idle", "samples": 2})
    submitted_at = time.monotonic()
    assert balance(stack, key) == 8
    # While it waits, its keys expire at the latest SDXL_MAX_QUEUE_TIME_S plus the result TTL.
    for name in request_keys(stack, request_id):
        assert 0 < stack.redis().ttl(name) <= MAX_QUEUE_TIME_S + RESULT_TTL_S, name
    body = wait_until(
        lambda: (s := status(stack, key, request_id))["status"] == "FAILED" and s,
        MAX_QUEUE_TIME_S + 3 * JOB_LOST_S,
        "the request to expire in its queue",
    )
    report("request QUEUED past SDXL_MAX_QUEUE_TIME_S", body["error"], time.monotonic() - submitted_at)
    assert body["error"] == "expired in queue"
    assert balance(stack, key) == 10
    assert stack.redis().lpos(stack.keys.rq_queue_key("idle"), request_id) is None
    for name in request_keys(stack, request_id):
        assert 0 < stack.redis().ttl(name) <= RESULT_TTL_S, name


def test_every_key_of_a_request_expires_and_a_killed_worker_leaves_rqs_registries(stack):
    key = stack.create_key(name="keys", credits=10)
    queued = submit(stack, key, {"image": IMAGE, "prompt": "p", "base_model": "idle"})
    cancel = httpx.delete(f"{stack.base_url}/v2/requests/{queued}", headers={"x-api-key": key}, timeout=10)
    assert cancel.status_code == 202
    client = stack.redis()
    assert 0 < client.ttl(f"rq:job:{queued}") <= RESULT_TTL_S, "RQ's job hash of a cancelled request"

    # 512 px: still running when killed 2 s in (at 256 px it once completed first, on a fast day,
    # and an idle worker's death frees no request, so nothing retired its RQ registration)
    running = submit(stack, key, slow_job(512))
    worker_id = running_worker(stack, running, timeout=60)
    rq_key = f"rq:worker:{worker_id}"
    assert client.sismember("rq:workers", rq_key)
    [worker] = stack.workers
    time.sleep(HEARTBEAT_TTL_S)  # a beat or two into the job (RQ gave its hash an hour at the start)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    assert 0 < client.ttl(rq_key) <= 95, "RQ's worker hash lives a minute and a half, not an hour"
    wait_until(lambda: heartbeat(stack, worker_id) is None, JOB_LOST_S, "the heartbeat to expire")
    wait_until(lambda: not client.sismember("rq:workers", rq_key), 3 * JOB_LOST_S, "RQ to forget the worker")
    assert 0 < client.ttl(rq_key) <= 60
    # No worker is left: the request goes back to its queue, then expires there.
    wait_until(
        lambda: status(stack, key, running)["status"] == "FAILED", 3 * JOB_LOST_S, "the request to end"
    )
    for request_id in (queued, running):
        names = request_keys(stack, request_id)
        assert names, "its record is kept for the result TTL"
        for name in names:
            assert 0 < client.ttl(name) <= RESULT_TTL_S, name
    assert balance(stack, key) == 10
