"""Redis outages under the running API and worker: a hung Redis (SIGSTOP) and a crashed one
(SIGTERM, SIGKILL) make the API answer 502 `Service temporarily unavailable` within 2 seconds,
/readyz 503 and /healthz 200; once Redis is back on the same port, API and worker recover by
themselves and a new job completes.

Every test here uses a PRIVATE redis-server on a free port (never the shared one on 6379), without
persistence: a crash loses its data, so authentication is disabled (keys would be lost with it).
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import image_factory
from tests.faults import (
    heartbeat,
    report,
    request_fields,
    running_worker,
    slow_job,
    wait_request_end,
    wait_until,
)
from tests.private_redis import PrivateRedis, running_private_redis
from tests.stack import Stack, make_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"
UNAVAILABLE = {"error": "Service temporarily unavailable"}
FAST = {
    "image": base64.b64encode(image_factory.png(96, 96)).decode(),
    "prompt": "redis blinked",
    "base_model": "tiny",
    "num_inference_steps": 20,
    "strength": 0.3,
}
BOUND_S = 2.0


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    yield from running_private_redis()


@pytest.fixture(scope="module")
def stack(private_redis) -> Iterator[Stack]:
    # JOB_LOST_S 60: heartbeats live 15 s, so a hang of a few seconds does not look like dead workers.
    stack = make_stack(SDXL_AUTH="disabled", REDIS_URL=private_redis.url, SDXL_JOB_LOST_S="60")
    stack.start_api()
    stack.start_worker()
    yield stack
    if private_redis.process is not None and private_redis.process.poll() is None:
        private_redis.signal(signal.SIGCONT)
    stack.stop()


@pytest.fixture(scope="module")
def http(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


def run_v1(http: httpx.Client) -> httpx.Response:
    return http.post(f"/v1/{SLUG}", json=FAST, timeout=120)


def assert_outage_answers(http: httpx.Client, request_id: str, fault: str) -> None:
    """Submit, status and result: 502 with the contract's JSON body, each within BOUND_S; /readyz
    503; /healthz 200."""
    calls = {
        "submit": lambda: http.post(f"/v2/{SLUG}", json=FAST),
        "status": lambda: http.get(f"/v2/requests/{request_id}/status"),
        "result": lambda: http.get(f"/v2/requests/{request_id}"),
        "v1": lambda: http.post(f"/v1/{SLUG}", json=FAST),
    }
    for name, call in calls.items():
        started = time.monotonic()
        response = call()
        elapsed = time.monotonic() - started
        report(f"Redis {fault}: {name}", response.status_code, elapsed)
        assert response.status_code == 502, (name, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == UNAVAILABLE
        assert elapsed < BOUND_S, f"{name} took {elapsed:.2f} s"
    started = time.monotonic()
    response = http.get("/readyz")
    elapsed = time.monotonic() - started
    report(f"Redis {fault}: /readyz", response.status_code, elapsed)
    assert response.status_code == 503 and "error" in response.json()
    assert elapsed < BOUND_S
    started = time.monotonic()
    response = http.get("/healthz")
    report(f"Redis {fault}: /healthz", response.status_code, time.monotonic() - started)
    assert response.status_code == 200


def recovers(http: httpx.Client, fault: str, since: float) -> None:
    """The API answers again and a worker is alive (readyz), then a new job completes."""
    wait_until(lambda: http.get("/readyz").status_code == 200, 30, "/readyz to be 200 again", interval=0.2)
    response = run_v1(http)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    report(f"Redis back after {fault}: new v1 job", response.status_code, time.monotonic() - since)


@pytest.fixture
def finished_request(http) -> str:
    response = run_v1(http)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def test_redis_hang_is_502_fast_and_recovers(stack, private_redis, http, finished_request):
    private_redis.signal(signal.SIGSTOP)
    try:
        assert_outage_answers(http, finished_request, "hung (SIGSTOP)")
    finally:
        private_redis.signal(signal.SIGCONT)
    resumed = time.monotonic()
    recovers(http, "SIGSTOP/SIGCONT", resumed)
    assert http.get(f"/v2/requests/{finished_request}").json()["status"] == "COMPLETED"


def test_redis_hang_mid_job_does_not_leave_the_request_processing(stack, private_redis, http):
    request_id = http.post(f"/v2/{SLUG}", json=slow_job(128)).json()["request_id"]
    worker_id = running_worker(stack, request_id, timeout=60)
    private_redis.signal(signal.SIGSTOP)
    time.sleep(3)  # past the 1.5 s socket timeout: the job's next progress write fails
    private_redis.signal(signal.SIGCONT)
    resumed = time.monotonic()
    # The worker lives on (its heartbeat too), so no reaper may touch the request: the worker itself
    # hands it back, and it runs again.
    assert heartbeat(stack, worker_id) is not None

    body = wait_request_end(
        lambda: http.get(f"/v2/requests/{request_id}/status").json(), 120, "the request to end after the hang"
    )
    report("Redis hung 3 s mid-job: the request", body["status"], time.monotonic() - resumed)
    assert body["status"] == "COMPLETED", body
    assert request_fields(stack, request_id)["attempts"] == "2", "the interrupted attempt ran again"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_redis_crash_is_502_fast_and_recovers_on_restart(stack, private_redis, http, finished_request, sig):
    fault = f"down ({signal.Signals(sig).name})"
    worker = stack.workers[0]
    private_redis.stop(sig)
    assert_outage_answers(http, finished_request, fault)
    time.sleep(2)  # long enough for the worker's RQ loop and heartbeat to hit the outage
    assert worker.poll() is None, "the worker survives a Redis outage"
    private_redis.start()  # same port, empty data
    restarted = time.monotonic()
    recovers(http, f"restart after {signal.Signals(sig).name}", restarted)
    assert worker.poll() is None
    assert stack.live_workers() == 1
