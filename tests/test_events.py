"""Live status through a running API and worker on `tiny`: the SSE stream read by a real HTTP client
(httpx, streaming), reconnection with Last-Event-ID, and `status?wait=` long-polling."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.faults import running_worker, slow_job, wait_request_end
from tests.stack import Stack, start_full_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    stack = start_full_stack(tmp_path_factory.mktemp("events"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(stack) -> str:
    return stack.create_key(name="events")


@pytest.fixture
def http(stack, key) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=60) as client:
        yield client


@dataclass
class Event:
    name: str
    id: str | None
    body: Any


def read_events(response: httpx.Response, until: int | None = None) -> list[Event]:
    """Parses a text/event-stream body (comments and `retry:` skipped) to its end, or `until` events."""
    events: list[Event] = []
    name, event_id, data = "message", None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                events.append(Event(name, event_id, json.loads("\n".join(data))))
                if until is not None and len(events) >= until:
                    return events
            name, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)
    return events


def submit(http: httpx.Client, body: dict[str, Any]) -> str:
    response = http.post(f"/v2/{SLUG}", json=body)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def stream_id(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def test_stream_gives_status_progress_then_result_and_ends(http, stack):
    blocker = submit(http, slow_job(128, 60))  # keeps the one worker busy: the next one waits QUEUED
    running_worker(stack, blocker, timeout=60)
    request_id = submit(http, slow_job(64, 20))
    with http.stream("GET", f"/v2/requests/{request_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)  # returns only when the server ends the stream
    names = [event.name for event in events]
    statuses = [event.body["status"] for event in events if event.name == "status"]
    assert statuses == ["QUEUED", "PROCESSING", "COMPLETED"], names
    assert names[-1] == "result" and names.count("result") == 1
    assert events[0].body["queue_position"] == 0  # the status at the moment of connecting, in full
    steps = [event.body["progress"]["step"] for event in events if event.name == "progress"]
    assert steps == list(range(1, 21))  # every denoising step, in order, between the two statuses
    assert names.index("progress") > names.index("status", 1)
    assert all(event.body["progress"]["total"] == 20 for event in events if event.name == "progress")
    ids = [stream_id(event.id) for event in events if event.id]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    result = http.get(f"/v2/requests/{request_id}").json()
    assert events[-1].body == result and result["status"] == "COMPLETED"


def test_reconnect_with_last_event_id_resumes_without_duplicates(http, stack):
    request_id = submit(http, slow_job(128, 60))
    running_worker(stack, request_id, timeout=60)
    with http.stream("GET", f"/v2/requests/{request_id}/events") as response:
        first = read_events(response, until=4)  # the status now, then a few steps: then drop it
    time.sleep(0.5)  # steps happen while the client is away
    last_id = first[-1].id
    resume = {"Last-Event-ID": last_id}
    with http.stream("GET", f"/v2/requests/{request_id}/events", headers=resume) as response:
        assert response.status_code == 200
        rest = read_events(response)
    assert stream_id(rest[0].id) > stream_id(last_id)
    ids = [event.id for event in first + rest]
    assert len(ids) == len(set(ids)), "no event twice"
    steps = [event.body["progress"]["step"] for event in first + rest if event.name == "progress"]
    assert steps == list(range(steps[0], 61)), "no step missing and none twice"
    assert [event.name for event in rest][-2:] == ["status", "result"]
    # Every entry the worker wrote after the first connection's opening status reached the client.
    stored = [entry_id.decode() for entry_id, _ in stack.redis().xrange(stack.keys.events(request_id))]
    assert [e for e in ids[1:]] == [e for e in stored if stream_id(e) > stream_id(first[0].id)]
    # Reconnecting after the result: 204, which tells an EventSource to stop.
    done = http.get(f"/v2/requests/{request_id}/events", headers={"Last-Event-ID": rest[-1].id})
    assert done.status_code == 204


def test_stream_of_an_ended_request_gives_its_status_and_result_at_once(http, stack):
    request_id = submit(http, {**slow_job(64, 20), "base_model": "idle"})
    assert http.delete(f"/v2/requests/{request_id}").status_code == 202
    started = time.monotonic()
    with http.stream("GET", f"/v2/requests/{request_id}/events") as response:
        events = read_events(response)
    assert time.monotonic() - started < 5
    assert [event.name for event in events] == ["status", "result"]
    assert events[0].body["status"] == "FAILED" and events[0].body["error"] == "cancelled"
    assert events[1].body["error"] == "cancelled" and events[1].body["output"] is None


def test_wait_answers_on_the_change_itself(http, stack):
    request_id = submit(http, {**slow_job(64, 20), "base_model": "idle"})  # no worker: stays QUEUED
    threading.Timer(1.0, lambda: http.delete(f"/v2/requests/{request_id}")).start()
    started = time.monotonic()
    response = http.get(f"/v2/requests/{request_id}/status", params={"wait": 30})
    elapsed = time.monotonic() - started
    assert response.status_code == 422 and response.json()["status"] == "FAILED"
    assert 0.9 < elapsed < 6, elapsed  # woken by the cancel, long before the 30 s

    running = submit(http, slow_job(128, 60))
    running_worker(stack, running, timeout=60)
    before = http.get(f"/v2/requests/{running}/status").json()["progress"]["step"]
    started = time.monotonic()
    body = http.get(f"/v2/requests/{running}/status", params={"wait": 30}).json()
    assert time.monotonic() - started < 5
    assert body["status"] == "COMPLETED" or body["progress"]["step"] > before
    wait_request_end(lambda: http.get(f"/v2/requests/{running}/status"))


def test_wait_answers_after_s_seconds_when_nothing_changes(http):
    request_id = submit(http, {**slow_job(64, 20), "base_model": "idle"})
    started = time.monotonic()
    response = http.get(f"/v2/requests/{request_id}/status", params={"wait": 2})
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.json()["status"] == "QUEUED"
    assert 1.9 < elapsed < 6, elapsed
    started = time.monotonic()
    assert http.get(f"/v2/requests/{request_id}/status", params={"wait": 0}).json()["status"] == "QUEUED"
    assert time.monotonic() - started < 2
    http.delete(f"/v2/requests/{request_id}")


@pytest.mark.parametrize("wait", ["61", "-1", "abc", "nan", "inf"])
def test_bad_wait_is_400(http, wait):
    request_id = submit(http, {**slow_job(64, 20), "base_model": "idle"})
    response = http.get(f"/v2/requests/{request_id}/status", params={"wait": wait})
    assert response.status_code == 400
    assert "wait must be" in response.json()["error"] and "between 0 and 60" in response.json()["error"]
    http.delete(f"/v2/requests/{request_id}")


def test_bad_last_event_id_is_400_and_other_keys_see_404(http, stack):
    request_id = submit(http, {**slow_job(64, 20), "base_model": "idle"})
    bad = http.get(f"/v2/requests/{request_id}/events", headers={"Last-Event-ID": "nope"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]
    other = {"x-api-key": stack.create_key(name="other")}
    for path in (f"/v2/requests/{request_id}/events", f"/v2/requests/{request_id}/status?wait=1"):
        response = httpx.get(stack.base_url + path, headers=other, timeout=10)
        assert response.status_code == 404
        assert response.json() == {"error": f"Request {request_id} not found"}
    assert httpx.get(stack.base_url + f"/v2/requests/{request_id}/events", timeout=10).status_code == 401
    http.delete(f"/v2/requests/{request_id}")


def test_event_stream_expires_with_its_request(http, stack):
    request_id = submit(http, slow_job(64, 20))
    wait_request_end(lambda: http.get(f"/v2/requests/{request_id}/status"))
    client = stack.redis()
    request_ttl = client.ttl(stack.keys.request(request_id))
    events_ttl = client.ttl(stack.keys.events(request_id))
    assert client.xlen(stack.keys.events(request_id)) >= 4  # PROCESSING, steps, COMPLETED, result
    assert 0 < events_ttl <= 3600 and abs(events_ttl - request_ttl) <= 1
