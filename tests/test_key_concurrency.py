"""Per-key concurrency (CONTRACT 10, `keys create --concurrency N`) through the running stack: two
worker subprocesses, a key limited to one request PROCESSING at once: never two at once, all
complete, in order, none refused; another key's requests are not held up; the CLI sets and shows it."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx
import pytest

from tests.faults import request_fields, slow_job, wait_request_end, wait_until
from tests.stack import make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG
from tests.test_keys_cli import CLI

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    stack = make_stack()
    stack.start_api()
    stack.start_worker()
    stack.start_worker()
    yield stack
    stack.stop()


def keys_cli(stack, *args: str) -> str:
    done = subprocess.run(
        [str(CLI), "keys", *args], env=stack.env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


class Watch(threading.Thread):
    """Polls the requests' statuses from Redis and keeps the most seen PROCESSING at once."""

    def __init__(self, stack, request_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.stack, self.request_ids, self.most, self.stop = stack, request_ids, 0, threading.Event()

    def run(self) -> None:
        client = self.stack.redis()
        while not self.stop.is_set():
            with client.pipeline(transaction=False) as pipe:
                for request_id in self.request_ids:
                    pipe.hget(self.stack.keys.request(request_id), "status")
                statuses = pipe.execute()
            self.most = max(self.most, sum(1 for s in statuses if s == b"PROCESSING"))
            time.sleep(0.01)


def end_status(http: httpx.Client, request_id: str) -> dict:
    return wait_request_end(lambda: http.get(f"/v2/requests/{request_id}/status"), 120).json()


def status_of(stack, request_id: str) -> str | None:
    return request_fields(stack, request_id).get("status")


def test_a_key_limited_to_one_runs_one_at_a_time_in_order_on_two_workers(stack):
    created = json.loads(keys_cli(stack, "create", "--name", "serial", "--concurrency", "1", "--json"))
    assert created["concurrency"] == 1
    [listed] = [k for k in json.loads(keys_cli(stack, "list", "--json")) if k["id"] == created["id"]]
    assert listed["concurrency"] == 1
    assert "CONCURRENCY" in keys_cli(stack, "list")
    other = stack.create_key(name="unlimited")
    limited_http = httpx.Client(base_url=stack.base_url, headers={"x-api-key": created["key"]}, timeout=60)
    other_http = httpx.Client(base_url=stack.base_url, headers={"x-api-key": other}, timeout=60)
    with limited_http, other_http:
        ids = []
        for _ in range(5):
            answer = limited_http.post(f"/v2/{SLUG}", json=slow_job(128, steps=50))
            assert answer.status_code == 200  # never refused for the limit
            ids.append(answer.json()["request_id"])
        watch = Watch(stack, ids)
        watch.start()
        wait_until(lambda: status_of(stack, ids[0]) == "PROCESSING", 90, "the first to start")
        # The other worker is not held up by the limited key's waiting requests.
        free = other_http.post(f"/v2/{SLUG}", json={"image": IMAGE, "prompt": "p", **FAST})
        assert end_status(other_http, free.json()["request_id"])["status"] == "COMPLETED"
        assert any(status_of(stack, i) == "QUEUED" for i in ids), "it ended while they waited"
        ends = [end_status(limited_http, i) for i in ids]
        watch.stop.set()
        watch.join()
    assert [e["status"] for e in ends] == ["COMPLETED"] * 5
    assert watch.most == 1, "never two PROCESSING at once"
    fields = [request_fields(stack, i) for i in ids]
    starts = [float(f["started_at"]) for f in fields]
    finishes = [float(f["finished_at"]) for f in fields]
    assert starts == sorted(starts), "started in the order they were submitted"
    assert all(finishes[i] <= starts[i + 1] for i in range(4)), "each started after the previous ended"
    assert len({f["worker"] for f in fields}) == 2, "both workers took the key's requests"
    key_sets = list(stack.redis().scan_iter(match=f"{stack.prefix}:key:*:*"))
    assert all(stack.redis().ttl(k) > 0 for k in key_sets), "the key's sets expire"
    print(f"\nFIGURE | 5 requests, concurrency 1, 2 workers: {finishes[-1] - starts[0]:.2f} s")


def test_a_cancelled_parked_request_lets_the_next_one_run(stack):
    key = stack.create_key(name="cancel-parked", concurrency=1)
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=60) as http:
        ids = [http.post(f"/v2/{SLUG}", json=slow_job(128, steps=50)).json()["request_id"] for _ in range(3)]
        wait_until(lambda: status_of(stack, ids[0]) == "PROCESSING", 90, "the first to start")
        assert http.delete(f"/v2/requests/{ids[1]}").status_code == 202
        statuses = [end_status(http, i) for i in ids]
    assert [s["status"] for s in statuses] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert statuses[1]["error"] == "cancelled"
