"""Lost workers (CONTRACT 6): a worker SIGKILLed mid-job leaves no request PROCESSING. The request
runs once more on another worker, or ends FAILED "worker lost" with its credits back, within
SDXL_JOB_LOST_S of the death; workers announce themselves with a heartbeat key that expires.

Real API and worker subprocesses on the shared Redis (unique prefix), `tiny` on the CPU. The other
hardening test modules import the small helpers defined here (`wait_until`, `report`, ...).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app import accounts
from app.settings import Settings
from tests import image_factory
from tests.stack import Stack, make_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"
JOB_LOST_S = 8.0
HEARTBEAT_TTL_S = Settings(job_lost_s=JOB_LOST_S).heartbeat_ttl_s  # 2 s for JOB_LOST_S = 8


def slow_job(side: int, steps: int = 100) -> dict[str, Any]:
    """`steps` denoising steps at strength 1 on `tiny`: long enough to be caught mid-job (100 steps at
    512 px take about a minute on this 2-core CPU box, at 256 px about 5 s, at 128 px about 2.5 s)."""
    image = base64.b64encode(image_factory.jpeg(side, side)).decode()
    return {
        "image": image,
        "prompt": "slow",
        "base_model": "tiny",
        "num_inference_steps": steps,
        "strength": 1,
    }


def report(name: str, status: Any, seconds: float) -> None:
    """One line per attack or fault, collected into docs/hardening.md (run pytest with -s)."""
    print(f"\nHARDENING | {name} | {status} | {seconds:.3f} s")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def request_fields(stack: Stack, request_id: str) -> dict[str, str]:
    raw = stack.redis().hgetall(stack.keys.request(request_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def running_worker(stack: Stack, request_id: str, timeout: float, other_than: str | None = None) -> str:
    """Waits until the request is PROCESSING with at least one denoising step done; its worker id."""

    def check() -> str | None:
        fields = request_fields(stack, request_id)
        running = fields.get("status") == "PROCESSING" and int(fields.get("step") or 0) >= 1
        if running and fields.get("worker") and fields["worker"] != other_than:
            return fields["worker"]
        return None

    return wait_until(check, timeout, f"request {request_id} to run (worker other than {other_than})")


def heartbeat(stack: Stack, worker_id: str) -> dict[str, Any] | None:
    raw = stack.redis().get(stack.keys.worker(worker_id))
    return json.loads(raw) if raw else None


def kill_worker(stack: Stack, worker_id: str) -> float:
    """SIGKILLs the worker process that holds `worker_id` (its pid is in its heartbeat); returns the
    time of the kill."""
    beat = heartbeat(stack, worker_id)
    assert beat is not None, "a running worker announces itself with a heartbeat key"
    pttl = stack.redis().pttl(stack.keys.worker(worker_id))
    assert 0 < pttl <= HEARTBEAT_TTL_S * 1000, "the heartbeat key expires unless renewed"
    [process] = [p for p in stack.workers if p.pid == beat["pid"]]
    os.kill(process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    process.wait(timeout=10)
    return killed_at


def balance(stack: Stack, key: str) -> int | None:
    return accounts.get_key(stack.redis(), stack.keys, key).credits


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

    def finished() -> httpx.Response | None:
        response = status(stack, key, request_id)
        return response if response.json()["status"] in ("COMPLETED", "FAILED") else None

    response = wait_until(finished, 120, "the second attempt to finish", interval=0.2)
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
