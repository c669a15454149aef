"""Every end of a request is refunded in the Lua step that ends it (CONTRACT 6), proven with the
process that makes that step frozen (SIGSTOP) the moment Redis sees the step, then killed: whatever
it would have sent next never arrives, and the balance is already right. Also: a cancel accepted
after the last denoising step wins over the completion, an API killed right after the submission's
step leaves a paid request that runs, and a worker frozen past its heartbeat whose request was
taken over stops."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.faults import (
    JOB_LOST_S,
    absent_worker,
    balance,
    freeze_after_script,
    heartbeat,
    kill_frozen,
    preload_scripts,
    report,
    request_fields,
    running_worker,
    slow_job,
    wait_request_end,
    wait_until,
)
from tests.stack import start_full_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path):
    stack = start_full_stack(tmp_path, SDXL_JOB_LOST_S=str(JOB_LOST_S), SDXL_SYNC_TIMEOUT_S="2")
    preload_scripts(stack)
    yield stack
    stack.stop()


def post(stack, key: str, body: dict, version: str = "v2") -> httpx.Response:
    return httpx.post(f"{stack.base_url}/{version}/{SLUG}", json=body, headers={"x-api-key": key}, timeout=30)


def status(stack, key: str, request_id: str) -> dict:
    return httpx.get(
        f"{stack.base_url}/v2/requests/{request_id}/status", headers={"x-api-key": key}, timeout=10
    ).json()


def delete(stack, key: str, request_id: str) -> httpx.Response:
    return httpx.delete(f"{stack.base_url}/v2/requests/{request_id}", headers={"x-api-key": key}, timeout=10)


def restart_api(stack) -> None:
    kill_frozen(stack.api)
    stack.start_api()


def test_cancel_of_a_queued_request_frozen_after_its_step_is_refunded_and_a_retry_answers_202(stack):
    key = stack.create_key(name="cancel", credits=10)
    request_id = post(stack, key, {"image": IMAGE, "prompt": "p", "base_model": "idle", "samples": 2}).json()[
        "request_id"
    ]
    assert balance(stack, key) == 8
    freeze_after_script(
        stack,
        stack.api.pid,
        "cancel",
        lambda: delete(stack, key, request_id),
        matches=lambda w: request_id in w,
    )
    assert balance(stack, key) == 10, "refunded by the cancel step itself, while the API is frozen"
    assert request_fields(stack, request_id)["error"] == "cancelled"
    restart_api(stack)
    again = delete(stack, key, request_id)  # the client never got its answer: it retries
    assert again.status_code == 202 and again.json() == {"request_id": request_id, "status": "FAILED"}
    assert balance(stack, key) == 10
    report("API frozen and killed right after the cancel step", "refunded; retried DELETE 202", 0)


def test_v1_timeout_frozen_after_its_cancel_is_refunded(stack):
    key = stack.create_key(name="v1", credits=10)
    absent_worker(stack, "idle")  # v1 waits (a live worker serves `idle`, busy): the 2 s timeout comes
    freeze_after_script(
        stack,
        stack.api.pid,
        "cancel",
        lambda: post(stack, key, {"image": IMAGE, "prompt": "p", "base_model": "idle"}, "v1"),
    )
    [request_id] = [k.decode().rsplit(":", 1)[1] for k in stack.redis().scan_iter(f"{stack.prefix}:req:*")]
    assert balance(stack, key) == 10
    assert request_fields(stack, request_id)["error"] == "cancelled"
    kill_frozen(stack.api)


def test_a_failed_request_frozen_after_its_end_is_refunded(stack):
    key = stack.create_key(name="failed", credits=10)
    [worker] = stack.workers
    freeze_after_script(
        stack,
        worker.pid,
        "finish",
        lambda: post(stack, key, {"image": IMAGE, "prompt": "p", "base_model": "broken", "samples": 3}),
    )
    [request_id] = [k.decode().rsplit(":", 1)[1] for k in stack.redis().scan_iter(f"{stack.prefix}:req:*")]
    assert status(stack, key, request_id)["status"] == "FAILED"
    assert balance(stack, key) == 10, "refunded by finish's own step, while the worker is frozen"
    kill_frozen(worker)
    assert balance(stack, key) == 10


def test_a_running_request_cancelled_and_frozen_after_its_end_is_refunded(stack):
    key = stack.create_key(name="running", credits=10)
    request_id = post(stack, key, slow_job(256)).json()["request_id"]
    running_worker(stack, request_id, timeout=60)
    [worker] = stack.workers
    freeze_after_script(stack, worker.pid, "finish", lambda: delete(stack, key, request_id))
    fields = request_fields(stack, request_id)
    assert fields["status"] == "FAILED" and fields["error"] == "cancelled"
    assert balance(stack, key) == 10
    kill_frozen(worker)
    time.sleep(JOB_LOST_S / 2)  # the reapers see a dead worker: nothing is left for them to undo
    assert status(stack, key, request_id)["error"] == "cancelled" and balance(stack, key) == 10


def test_worker_lost_frozen_after_the_reap_is_refunded(stack):
    key = stack.create_key(name="lost", credits=10)
    request_id = post(stack, key, slow_job(256)).json()["request_id"]
    worker_id = running_worker(stack, request_id, timeout=60)
    # As if this were its second run already: the next reap ends it FAILED "worker lost".
    stack.redis().hset(stack.keys.request(request_id), "attempts", 2)
    [worker] = stack.workers
    # Only the API reaps once the worker is dead. It is held (SIGSTOP) until the heartbeat has gone,
    # so that the reap step watched is its first one after that: a pass that fell between the
    # heartbeat's expiry and the start of the watch reaped unseen (a CI run timed out so).
    os.kill(stack.api.pid, signal.SIGSTOP)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    wait_until(lambda: heartbeat(stack, worker_id) is None, JOB_LOST_S, "the heartbeat to expire")
    assert request_fields(stack, request_id)["status"] == "PROCESSING"
    # Let the API go on, and freeze it again right after its reap step.
    freeze_after_script(
        stack,
        stack.api.pid,
        "reap",
        lambda: os.kill(stack.api.pid, signal.SIGCONT),
        matches=lambda words: request_id in words,
    )
    fields = request_fields(stack, request_id)
    assert fields["status"] == "FAILED" and fields["error"] == "worker lost"
    assert balance(stack, key) == 10
    kill_frozen(stack.api)


def test_an_api_killed_right_after_its_submission_step_leaves_a_paid_request_that_runs(stack):
    """The credits and the request are one step (submit.lua): the API frozen the moment Redis ran
    it, then killed before it answered, leaves a queued request that was paid for, and the worker
    runs it; no state exists with the credits taken and no request."""
    key = stack.create_key(name="submit", credits=10)
    freeze_after_script(
        stack,
        stack.api.pid,
        "submit",
        lambda: post(stack, key, {"image": IMAGE, "prompt": "p", "samples": 4, **FAST}),
    )
    assert balance(stack, key) == 6
    [request_id] = [
        name.decode().rsplit(":", 1)[1] for name in stack.redis().scan_iter(stack.keys.request("*"))
    ]
    assert request_fields(stack, request_id)["status"] in ("QUEUED", "PROCESSING", "COMPLETED")
    kill_frozen(stack.api)
    fields = wait_request_end(lambda: request_fields(stack, request_id), timeout=120)
    assert fields["status"] == "COMPLETED", fields
    assert balance(stack, key) == 6, "charged once, for the work done"


def test_a_cancel_accepted_during_the_decode_ends_failed_and_refunded_never_completed(stack):
    key = stack.create_key(name="late", credits=10)
    [worker] = stack.workers

    def last_step(words: list[str]) -> bool:  # progress.lua, one request: 1 request worker step total ...
        return len(words) >= 5 and words[3] == words[4] and words[4] not in ("0", '""', "")

    submitted: dict[str, str] = {}

    def submit() -> None:
        submitted["id"] = post(stack, key, {"image": IMAGE, "prompt": "p", **FAST}).json()["request_id"]

    freeze_after_script(stack, worker.pid, "progress", submit, matches=last_step)
    request_id = wait_until(lambda: submitted.get("id"), 10, "the submission")
    # Frozen after its last denoising step, before the decode: the cancel arrives now.
    response = delete(stack, key, request_id)
    assert response.status_code == 202 and response.json()["status"] == "PROCESSING"
    os.kill(worker.pid, signal.SIGCONT)
    body = wait_request_end(lambda: status(stack, key, request_id), 30)
    assert body["status"] == "FAILED" and body["error"] == "cancelled"
    assert balance(stack, key) == 10, "a cancel accepted is never charged"
    assert not list(stack.redis().scan_iter(f"{stack.prefix}:out:{request_id}:*")), "no output stored"


def test_a_worker_frozen_past_its_heartbeat_stops_once_its_request_was_taken_over(stack):
    key = stack.create_key(name="frozen", credits=10)
    stack.start_worker(models="tiny")
    request_id = post(stack, key, slow_job(256)).json()["request_id"]
    first = running_worker(stack, request_id, timeout=60)
    [frozen] = [p for p in stack.workers if p.pid == heartbeat(stack, first)["pid"]]
    os.kill(frozen.pid, signal.SIGSTOP)
    second = running_worker(stack, request_id, timeout=3 * JOB_LOST_S, other_than=first)
    steps: list[int] = []
    stop = threading.Event()

    def watch_progress() -> None:
        while not stop.is_set():
            fields = request_fields(stack, request_id)
            if fields.get("status") != "PROCESSING":
                return
            steps.append(int(fields.get("step") or 0))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_progress)
    watcher.start()
    woke_at = time.monotonic()
    os.kill(frozen.pid, signal.SIGCONT)
    wait_until(
        lambda: (beat := heartbeat(stack, first)) is not None and beat["current"] is None,
        10,
        "the woken worker to let the request go",
    )
    report("worker frozen past its heartbeat, woken after a take-over", "stopped", time.monotonic() - woke_at)
    wait_until(
        lambda: status(stack, key, request_id)["status"] == "COMPLETED", 60, "the replacement to finish"
    )
    stop.set()
    watcher.join()
    assert steps == sorted(steps), "the progress clients see never goes backwards"
    fields = request_fields(stack, request_id)
    assert fields["worker"] == second and balance(stack, key) == 9
