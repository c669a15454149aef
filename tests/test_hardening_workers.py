"""Lost workers (CONTRACT 6): a worker SIGKILLed mid-job leaves no request PROCESSING. The request
runs once more on another worker, or ends FAILED "worker lost" with its credits back, within
SDXL_JOB_LOST_S of the death; workers announce themselves with a heartbeat key that expires.

Real API and worker subprocesses on the shared Redis (unique prefix), `tiny` on the CPU. The other
hardening test modules share the helpers in tests/faults.py (`wait_until`, `report`, ...).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.faults import (
    HEARTBEAT_TTL_S,
    JOB_LOST_S,
    balance,
    heartbeat,
    kill_worker,
    report,
    request_fields,
    running_worker,
    slow_job,
    wait_request_end,
    wait_until,
)
from tests.stack import Stack, make_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"


@pytest.fixture(scope="module")
def stack():
    stack = make_stack(SDXL_JOB_LOST_S=str(JOB_LOST_S))
    stack.start_api()
    # Three workers, started together: the first test kills one, the second kills the other two.
    for _ in range(3):
        stack.start_worker(wait=False)
    stack.wait_for(lambda: stack.live_workers() == 3, "three workers", timeout=180)
    yield stack
    stack.stop()


def submit(stack: Stack, key: str, body: dict[str, Any]) -> str:
    response = httpx.post(f"{stack.base_url}/v2/{SLUG}", json=body, headers={"x-api-key": key}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def status(stack: Stack, key: str, request_id: str) -> httpx.Response:
    return httpx.get(
        f"{stack.base_url}/v2/requests/{request_id}/status", headers={"x-api-key": key}, timeout=10
    )


def test_killed_worker_job_runs_again_on_another_worker_and_completes(stack):
    key = stack.create_key(name="requeue", credits=10)
    request_id = submit(stack, key, slow_job(256))
    first = running_worker(stack, request_id, timeout=60)
    killed_at = kill_worker(stack, first)

    # The dead worker's heartbeat expires by itself (nobody deletes it: the process is gone).
    wait_until(lambda: heartbeat(stack, first) is None, HEARTBEAT_TTL_S + 2, "the heartbeat to expire")
    report("worker SIGKILLed mid-job: heartbeat key expires", "gone", time.monotonic() - killed_at)

    second = running_worker(stack, request_id, timeout=JOB_LOST_S, other_than=first)
    taken_over_s = time.monotonic() - killed_at
    assert taken_over_s < JOB_LOST_S
    report("worker SIGKILLed mid-job, another alive: job runs again", "PROCESSING", taken_over_s)

    response = wait_request_end(lambda: status(stack, key, request_id), 120, "the second attempt to finish")
    assert response.status_code == 200 and response.json()["status"] == "COMPLETED", response.text
    report("worker SIGKILLed mid-job, another alive: job", "COMPLETED", time.monotonic() - killed_at)
    fields = request_fields(stack, request_id)
    assert fields["attempts"] == "2" and fields["worker"] == second != first
    assert balance(stack, key) == 9  # charged once, not refunded
    assert stack.redis().zscore(stack.keys.processing, request_id) is None


def test_killed_twice_ends_failed_worker_lost_with_refund(stack):
    alive = [p for p in stack.workers if p.poll() is None]
    assert len(alive) == 2
    key = stack.create_key(name="lost", credits=10)
    request_id = submit(stack, key, slow_job(512))
    assert balance(stack, key) == 9
    first = running_worker(stack, request_id, timeout=60)
    kill_worker(stack, first)
    # The attempt budget (2) is not spent yet: the other worker takes the request over; kill it too.
    second = running_worker(stack, request_id, timeout=JOB_LOST_S + 5, other_than=first)
    killed_at = kill_worker(stack, second)
    assert all(p.poll() is not None for p in stack.workers), "no worker is left"

    # Only the API's reaper is left to notice; the request must not stay PROCESSING.
    def failed() -> httpx.Response | None:
        response = status(stack, key, request_id)
        return response if response.json()["status"] != "PROCESSING" else None

    response = wait_until(failed, JOB_LOST_S, "the request to leave PROCESSING", interval=0.1)
    elapsed = time.monotonic() - killed_at
    body = response.json()
    assert response.status_code == 422 and body["status"] == "FAILED" and body["error"] == "worker lost"
    assert response.headers["content-type"] == "application/json"
    report("worker SIGKILLed twice, none left: FAILED 'worker lost'", response.status_code, elapsed)
    assert balance(stack, key) == 10, "the credits of a lost request are refunded"
    assert request_fields(stack, request_id)["attempts"] == "2"
    assert stack.redis().zscore(stack.keys.processing, request_id) is None
    result = httpx.get(f"{stack.base_url}/v2/requests/{request_id}", headers={"x-api-key": key}, timeout=10)
    assert result.status_code == 422 and result.json()["error"] == "worker lost"
    # No heartbeat survives its worker.
    assert heartbeat(stack, first) is None and heartbeat(stack, second) is None
    assert stack.live_workers() == 0
