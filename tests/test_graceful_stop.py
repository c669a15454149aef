"""Graceful stop: SIGTERM to the API while a v1 request waits (the request is still answered, new
connections are refused, exit 0); SIGTERM to a worker mid-job (the job completes, no new job is
taken, the heartbeat key disappears, exit 0)."""

from __future__ import annotations

import concurrent.futures
import signal
import time

import httpx
import pytest

from tests.faults import (
    heartbeat,
    report,
    request_fields,
    running_worker,
    slow_job,
    wait_until,
)
from tests.stack import make_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"


@pytest.fixture(scope="module")
def stack():
    stack = make_stack(SDXL_AUTH="disabled", SDXL_JOB_LOST_S="8")
    stack.start_api()
    stack.start_worker()
    yield stack
    stack.stop()


def processing_request(stack) -> str:
    """The id of the one request in the processing set, once it has made a denoising step."""
    found = wait_until(lambda: stack.redis().zrange(stack.keys.processing, 0, -1), 60, "a request to start")
    request_id = found[0].decode()
    running_worker(stack, request_id, timeout=60)
    return request_id


def test_sigterm_to_api_answers_the_waiting_v1_request_then_exits_0(stack):
    api = stack.api
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            httpx.post, f"{stack.base_url}/v1/{SLUG}", json=slow_job(128, steps=50), timeout=120
        )
        request_id = processing_request(stack)
        # uvicorn drains for up to 30 s (app/commands/api.py): the job takes a few seconds.
        api.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert request_fields(stack, request_id)["status"] == "PROCESSING", "in flight at the signal"

        # The listening socket closes at once: a new connection is refused while the v1 request drains.
        def refused() -> bool:
            try:
                httpx.get(f"{stack.base_url}/healthz", timeout=1)
            except httpx.ConnectError:
                return True
            return False

        wait_until(refused, 5, "new connections to be refused")
        report("SIGTERM to API: new connection", "refused", time.monotonic() - stopped_at)
        assert not waiting.done() or waiting.result().status_code == 200
        response = waiting.result(timeout=120)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    report("SIGTERM to API: in-flight v1 request", response.status_code, time.monotonic() - stopped_at)
    assert api.wait(timeout=30) == 0
    report("SIGTERM to API: process exit code", api.returncode, time.monotonic() - stopped_at)


def test_sigterm_to_worker_finishes_the_job_then_exits_0(stack):
    stack.start_api()  # the previous test stopped it
    [worker] = stack.workers
    submitted = httpx.post(f"{stack.base_url}/v2/{SLUG}", json=slow_job(128, steps=50), timeout=30)
    request_id = submitted.json()["request_id"]
    worker_id = running_worker(stack, request_id, timeout=60)
    worker.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert request_fields(stack, request_id)["status"] == "PROCESSING", "mid-job at the signal"
    # Queued behind the running job: a stopping worker must not take it.
    later = httpx.post(f"{stack.base_url}/v2/{SLUG}", json=slow_job(128, steps=50), timeout=30).json()[
        "request_id"
    ]

    assert worker.wait(timeout=120) == 0
    report("SIGTERM to worker mid-job: process exit code", worker.returncode, time.monotonic() - stopped_at)
    status = httpx.get(f"{stack.base_url}/v2/requests/{request_id}/status", timeout=10)
    assert status.status_code == 200 and status.json()["status"] == "COMPLETED", status.text
    report("SIGTERM to worker mid-job: the job", "COMPLETED", time.monotonic() - stopped_at)
    assert heartbeat(stack, worker_id) is None, "a worker that stops deletes its heartbeat key"
    assert stack.live_workers() == 0
    assert httpx.get(f"{stack.base_url}/v2/requests/{later}/status", timeout=10).json()["status"] == "QUEUED"
    assert httpx.get(f"{stack.base_url}/readyz", timeout=10).status_code == 503
