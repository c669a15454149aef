"""`Cancel-After` (CONTRACT 10) through the running stack: a queued request past its deadline never
runs, a running one stops at its next step; both end FAILED "deadline exceeded", refunded; a bad
header is 400."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faults import JOB_LOST_S, balance, request_fields, running_worker, slow_job, wait_request_end
from tests.stack import start_full_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e
EXCEEDED = "deadline exceeded"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # A short SDXL_JOB_LOST_S makes the reaper passes (and so the deadline sweep) come every 0.7 s.
    stack = start_full_stack(tmp_path_factory.mktemp("stack"), SDXL_JOB_LOST_S=str(JOB_LOST_S))
    yield stack
    stack.stop()


@pytest.fixture
def key(stack):
    return stack.create_key(name="deadlines", credits=20)


@pytest.fixture
def http(stack, key):
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=60) as client:
        yield client


def submit(http, body, cancel_after: str) -> str:
    answer = http.post(f"/v2/{SLUG}", json=body, headers={"Cancel-After": cancel_after})
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def ends(http, request_id, timeout=60) -> tuple[dict, float]:
    answer = wait_request_end(lambda: http.get(f"/v2/requests/{request_id}/status"), timeout)
    return answer.json(), time.monotonic()


def test_a_queued_request_past_its_deadline_ends_failed_refunded_without_running(stack, key, http):
    # `idle` is served by no worker: only the deadline sweep can end it.
    sent = time.monotonic()
    request_id = submit(http, {"image": IMAGE, "prompt": "p", "base_model": "idle", "samples": 2}, "1.5s")
    assert balance(stack, key) == 18
    body, ended = ends(http, request_id)
    assert body["status"] == "FAILED" and body["error"] == EXCEEDED
    assert 1.5 <= ended - sent < 1.5 + 6, "ended at its deadline, within a few sweep periods"
    print(f"\nFIGURE | queued request, Cancel-After 1.5 s: ended after {ended - sent:.2f} s")
    assert "started_at" not in request_fields(stack, request_id)
    assert balance(stack, key) == 20
    assert http.get("/v1/credits").json()["credits"]["used"] == 0
    assert stack.redis().zscore(stack.keys.deadlines, request_id) is None


def test_a_request_waiting_behind_another_past_its_deadline_never_runs(stack, key, http):
    # 384 px (about 5-11 s): at 128 px the blocker once ended inside the waiting request's 1 s
    blocker = http.post(f"/v2/{SLUG}", json=slow_job(384, steps=100)).json()["request_id"]
    running_worker(stack, blocker, timeout=60)
    waiting = submit(http, {"image": IMAGE, "prompt": "p", **FAST}, "1")
    body, _ = ends(http, waiting)
    assert body["error"] == EXCEEDED and "started_at" not in request_fields(stack, waiting)
    assert ends(http, blocker)[0]["status"] == "COMPLETED"  # no deadline: it ran to the end
    assert balance(stack, key) == 19


def test_a_running_request_stops_at_its_next_step_past_its_deadline(stack, key, http):
    sent = time.monotonic()
    # 384 px: about 2.3x the work of 256 px, which once finished inside its 3 s on a fast day
    request_id = submit(http, slow_job(384, steps=100), "3")
    running_worker(stack, request_id, timeout=30)
    body, ended = ends(http, request_id)
    assert body["status"] == "FAILED" and body["error"] == EXCEEDED
    fields = request_fields(stack, request_id)
    assert int(fields["step"]) < int(fields["total"]), "stopped before its last step"
    assert ended - sent < 3 + 5
    print(f"\nFIGURE | running request, Cancel-After 3 s: ended after {ended - sent:.2f} s")
    assert balance(stack, key) == 20
    # The worker is free again: a request with a generous deadline completes.
    done = submit(http, {"image": IMAGE, "prompt": "p", **FAST}, "5m")
    assert ends(http, done)[0]["status"] == "COMPLETED"


def test_v1_answers_the_deadline_as_a_failure(stack, key, http):
    answer = http.post(f"/v1/{SLUG}", json=slow_job(384, steps=100), headers={"Cancel-After": "2"})
    # The client's own time limit, as a timeout: 504, naming the request
    assert answer.status_code == 504 and answer.json() == {"error": EXCEEDED}
    assert answer.headers["x-request-id"]
    assert balance(stack, key) == 20


@pytest.mark.parametrize("value", ["", "0", "-5", "soon", "5d", "1h30", "90 s", "25h", "1e3"])
def test_a_bad_cancel_after_is_400(http, value):
    answer = http.post(f"/v2/{SLUG}", json={"image": IMAGE, "prompt": "p"}, headers={"Cancel-After": value})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("Cancel-After must be a number of seconds or a duration")


@pytest.mark.parametrize("value", ["90", "2.5", "90s", "5m", "1h30m", "1.5m", "500ms", "24h"])
def test_good_cancel_after_values_are_accepted(stack, http, value):
    request_id = submit(http, {"image": IMAGE, "prompt": "p", "base_model": "idle"}, value)
    deadline = stack.redis().zscore(stack.keys.deadlines, request_id)
    assert deadline is not None and deadline > time.time() - 5
    assert http.delete(f"/v2/requests/{request_id}").status_code == 202
