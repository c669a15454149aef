"""Results and outputs are gone after SDXL_RESULT_TTL_S (CONTRACT 5); v1 gives 504 past
SDXL_SYNC_TIMEOUT_S and the request is cancelled."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faults import absent_worker
from tests.stack import make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e


@pytest.fixture
def start_stack():
    stacks = []

    def start(**env: str):
        stack = make_stack(SDXL_AUTH="disabled", **env)
        stacks.append(stack)
        stack.start_api()
        return stack

    yield start
    for stack in stacks:
        stack.stop()


def test_results_and_outputs_expire(start_stack):
    stack = start_stack(SDXL_RESULT_TTL_S="2")
    stack.start_worker()
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        response = http.post(f"/v1/{SLUG}", json={"image": IMAGE, "prompt": "p", **FAST})
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        result = http.get(f"/v2/requests/{request_id}").json()
        assert http.get(result["output"]).status_code == 200
        time.sleep(3)
        assert http.get(f"/v2/requests/{request_id}/status").status_code == 404
        assert http.get(f"/v2/requests/{request_id}").status_code == 404
        assert http.get(result["output"]).status_code == 404
    workers = (b":worker:", b":workers")  # heartbeats and the registry of live workers
    leftovers = [
        k for k in stack.redis().scan_iter(match=f"{stack.prefix}:*") if not any(w in k for w in workers)
    ]
    # Nothing of the request itself is left; what outlives it is per model or per key (counters, the
    # step-time measure of the ETA, the key's listing index), and all but the counters expire.
    client = stack.redis()
    request_keys = [k for k in leftovers if request_id.encode() in k]
    assert request_keys == []
    lasting = [k for k in leftovers if b":metrics:" not in k and b":key:" not in k]
    assert all(client.ttl(k) > 0 for k in lasting), [(k, client.ttl(k)) for k in lasting]


def test_sync_timeout_is_504_and_cancels(start_stack):
    stack = start_stack(SDXL_SYNC_TIMEOUT_S="2")
    absent_worker(stack)  # a worker that takes nothing: the request waits QUEUED until the 2 s deadline.
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        started = time.monotonic()
        response = http.post(f"/v1/{SLUG}", json={"image": IMAGE, "prompt": "p", **FAST})
        assert response.status_code == 504 and "error" in response.json()
        assert 2 <= time.monotonic() - started < 5
    queue = stack.redis().lrange(stack.keys.rq_queue_key("tiny"), 0, -1)
    assert queue == []
