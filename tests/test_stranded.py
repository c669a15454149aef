"""A worker that pops a request off its queue (RQ's BLPOP or BLMOVE) and dies before its `start`
reaches Redis leaves the request QUEUED in no queue: the reapers put it back at the front of its
queue, or end it FAILED "worker lost" with its credits back when its RQ job is gone."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faults import JOB_LOST_S, balance, report, wait_until
from tests.stack import make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack():
    stack = make_stack(SDXL_JOB_LOST_S=str(JOB_LOST_S))  # stranded after 2 x 2 s
    stack.start_api()
    yield stack
    stack.stop()


def submit(stack, key: str) -> str:
    response = httpx.post(
        f"{stack.base_url}/v2/{SLUG}",
        json={"image": IMAGE, "prompt": "p", **FAST},
        headers={"x-api-key": key},
    )
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def status(stack, key: str, request_id: str) -> dict:
    return httpx.get(f"{stack.base_url}/v2/requests/{request_id}/status", headers={"x-api-key": key}).json()


def test_a_request_popped_by_a_dead_worker_goes_back_to_its_queue_and_completes(stack):
    key = stack.create_key(name="stranded", credits=5)
    request_id = submit(stack, key)
    queue = stack.keys.rq_queue_key("tiny")
    client = stack.redis()
    assert client.lpop(queue).decode() == request_id  # what a worker's dequeue does, then it dies
    popped_at = time.monotonic()
    assert status(stack, key, request_id)["status"] == "QUEUED"
    wait_until(lambda: client.lpos(queue, request_id) is not None, 20, "the request back in its queue")
    report(
        "request popped by a worker that died before starting it",
        "back in its queue",
        time.monotonic() - popped_at,
    )
    stack.start_worker()
    wait_until(lambda: status(stack, key, request_id)["status"] == "COMPLETED", 60, "the request to complete")
    assert balance(stack, key) == 4  # charged once


def test_a_stranded_request_whose_job_is_gone_fails_and_refunds(stack):
    key = stack.create_key(name="stranded-gone", credits=5)
    request_id = submit(stack, key)
    client = stack.redis()
    assert client.lpop(stack.keys.rq_queue_key("tiny")).decode() == request_id
    client.delete(f"rq:job:{request_id}")
    assert balance(stack, key) == 4
    popped_at = time.monotonic()
    wait_until(lambda: status(stack, key, request_id)["status"] == "FAILED", 20, "the request to fail")
    report("stranded request whose RQ job expired", "422 FAILED worker lost", time.monotonic() - popped_at)
    assert status(stack, key, request_id)["error"] == "worker lost"
    assert balance(stack, key) == 5


def test_a_request_waiting_in_its_queue_is_left_alone(stack):
    key = stack.create_key(name="waiting")
    request_id = submit(stack, key)
    queue = stack.keys.rq_queue_key("tiny")
    time.sleep(6)  # past the stranded threshold: checked, found waiting, not pushed twice
    assert stack.redis().lrange(queue, 0, -1) == [request_id.encode()]
    assert status(stack, key, request_id)["queue_position"] == 0
