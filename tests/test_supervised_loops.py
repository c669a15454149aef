"""Nothing stuck, nothing poisoned (issue 10, items 5 and 6), with real faults on a real stack: a
corrupt stored input and a spec another version wrote end their request FAILED and refunded (never
PROCESSING for ever); an unreadable record in the processing set is quarantined and logged while the
heartbeat and the reapers go on; a worker whose heartbeat keeps failing stops and exits non-zero."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.faults import JOB_LOST_S, balance, request_fields, wait_request_end, wait_until
from tests.stack import LOG_DIR, make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack():
    stack = make_stack(SDXL_JOB_LOST_S=str(JOB_LOST_S))
    stack.start_api()
    yield stack
    stack.stop()


def submit(stack, key: str, **fields) -> str:
    response = httpx.post(
        f"{stack.base_url}/v2/{SLUG}",
        json={"image": IMAGE, "prompt": "p", **FAST, **fields},
        headers={"x-api-key": key},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def logs(stack, name: str) -> str:
    return "".join(path.read_text(errors="replace") for path in LOG_DIR.glob(f"{stack.prefix}-{name}-*.log"))


def test_bad_stored_data_fails_its_request_alone_refunded(stack):
    key = stack.create_key(credits=10)
    client = stack.redis()
    corrupt_input, old_spec, fine = (submit(stack, key) for _ in range(3))
    assert balance(stack, key) == 7  # three reserved, no worker yet
    # A corrupt stored input image, its TTL kept.
    client.set(stack.keys.input_image(corrupt_input), b"\x89PNG garbage", keepttl=True)
    # A spec written by another version: a field this one needs is missing.
    spec = json.loads(client.hget(stack.keys.request(old_spec), "spec"))
    del spec["prompt"]
    client.hset(stack.keys.request(old_spec), "spec", json.dumps(spec))
    # An unreadable record in the processing set, held by a worker that does not exist.
    client.hset(
        stack.keys.request("unreadable-1"), mapping={"status": "PROCESSING", "worker": "gone", "spec": "{"}
    )
    client.expire(stack.keys.request("unreadable-1"), 600)
    client.zadd(stack.keys.processing, {"unreadable-1": 0})
    worker = stack.start_worker()

    def status(request_id: str) -> dict:
        response = httpx.get(
            f"{stack.base_url}/v2/requests/{request_id}/status", headers={"x-api-key": key}, timeout=10
        )
        assert response.status_code in (200, 422), response.text  # 422: FAILED, as Segmind answers it
        return response.json()

    for request_id in (corrupt_input, old_spec):
        ended = wait_request_end(lambda rid=request_id: request_fields(stack, rid), timeout=60)
        assert ended["status"] == "FAILED" and ended["error"].startswith("internal error:"), ended
    assert status(corrupt_input)["error"].startswith("internal error: UnidentifiedImageError")
    # The API cannot read the old spec either: a JSON error that says so, not a traceback.
    unreadable = httpx.get(f"{stack.base_url}/v2/requests/{old_spec}", headers={"x-api-key": key}, timeout=10)
    assert unreadable.status_code == 500 and "stored spec cannot be read" in unreadable.json()["error"]
    assert wait_request_end(lambda: status(fine), timeout=60)["status"] == "COMPLETED"
    assert balance(stack, key) == 9  # only the completed one is charged
    # The unreadable record: out of the processing set, named in the log; the loops went on.
    wait_until(lambda: client.zscore(stack.keys.processing, "unreadable-1") is None, 30, "the quarantine")
    assert "unreadable-1" in logs(stack, "worker") + logs(stack, "api")
    assert worker.poll() is None and stack.live_workers() == 1
    assert httpx.get(f"{stack.base_url}/readyz", timeout=10).status_code == 200
    # ...and a request after all that still runs.
    after = submit(stack, key)
    assert wait_request_end(lambda: status(after), timeout=60)["status"] == "COMPLETED"


def test_a_worker_whose_heartbeat_keeps_failing_stops_and_exits_non_zero(stack):
    worker = stack.start_worker()
    # A corrupted key: the registry of live workers becomes a string, every beat's write fails.
    client = stack.redis()
    client.delete(stack.keys.live_workers)
    client.set(stack.keys.live_workers, "corrupted")
    assert worker.wait(timeout=60) == 1
    assert "heartbeat failed" in logs(stack, "worker")
