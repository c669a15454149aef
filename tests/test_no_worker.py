"""Nothing waits for ever (CONTRACT 4): a v1 request for a base model that no live worker serves is
a 503 at once, naming the model, with Retry-After, and charges nothing; v2 queues it and its status
says `"workers": 0` (the number of live workers serving the model otherwise). Real API and worker
subprocesses; the worker serves `tiny` only."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faults import balance, slow_job, wait_request_end
from tests.stack import make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e
CREDITS = 10


@pytest.fixture(scope="module")
def stack():
    stack = make_stack()
    stack.start_api()
    stack.start_worker("tiny")
    yield stack
    stack.stop()


@pytest.fixture
def key(stack) -> str:
    return stack.create_key(name="no-worker", credits=CREDITS)


def requests_written(stack) -> int:
    return sum(1 for _ in stack.redis().scan_iter(match=f"{stack.prefix}:req:*"))


def test_v1_for_a_model_no_worker_serves_is_503_at_once(stack, key):
    before = requests_written(stack)
    started = time.monotonic()
    response = httpx.post(
        f"{stack.base_url}/v1/{SLUG}",
        json={"image": IMAGE, "prompt": "p", "base_model": "juggernaut"},
        headers={"x-api-key": key},
        timeout=60,
    )
    assert time.monotonic() - started < 10, "answered at once, not after the sync timeout"
    assert response.status_code == 503
    assert response.json() == {"error": "no worker is serving base model 'juggernaut'"}
    assert int(response.headers["retry-after"]) > 0
    assert balance(stack, key) == CREDITS, "nothing charged"
    assert requests_written(stack) == before, "no request left behind"


def test_v1_for_a_served_model_runs(stack, key):
    response = httpx.post(
        f"{stack.base_url}/v1/{SLUG}",
        json={"image": IMAGE, "prompt": "p", **FAST},
        headers={"x-api-key": key},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert balance(stack, key) == CREDITS - 1


def test_v2_queues_it_and_says_no_worker_serves_it(stack, key):
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=60) as http:
        unserved = http.post(f"/v2/{SLUG}", json={"image": IMAGE, "prompt": "p", "base_model": "juggernaut"})
        assert unserved.status_code == 200
        status = http.get(f"/v2/requests/{unserved.json()['request_id']}/status").json()
        assert status["status"] == "QUEUED" and status["workers"] == 0 and status["eta_s"] is None
        served = http.post(f"/v2/{SLUG}", json=slow_job(64, 20)).json()["request_id"]
        status = http.get(f"/v2/requests/{served}/status").json()
        assert status["status"] in ("QUEUED", "PROCESSING") and status["workers"] == 1, status
        assert wait_request_end(lambda: http.get(f"/v2/requests/{served}/status"), 120).json()["status"] == (
            "COMPLETED"
        )
        assert http.delete(f"/v2/requests/{unserved.json()['request_id']}").status_code == 202


def test_v1_once_the_last_worker_is_gone_is_503(stack, key):
    for process in stack.workers:
        process.terminate()
        process.wait(timeout=60)
    response = httpx.post(
        f"{stack.base_url}/v1/{SLUG}",
        json={"image": IMAGE, "prompt": "p", **FAST},
        headers={"x-api-key": key},
        timeout=60,
    )
    assert response.status_code == 503 and "'tiny'" in response.json()["error"]
