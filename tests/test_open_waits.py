"""Open status streams and long polls are bounded per API process (SDXL_MAX_OPEN_WAITS): each holds
a Redis connection while it waits, so idle streams must not be able to take the whole pool. A real
API subprocess with a limit of 2, real streaming HTTP clients, a request left QUEUED (no worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults import wait_until
from tests.stack import Stack, make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = make_stack(SDXL_MAX_OPEN_WAITS="2")
    stack.start_api()
    yield stack
    stack.stop()


def test_streams_past_the_limit_are_503_long_polls_answer_at_once_and_a_closed_stream_frees_its_place(stack):
    key = stack.create_key(name="streams")
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=30) as http:
        submitted = http.post(f"/v2/{SLUG}", json={"image": IMAGE, "prompt": "p", **FAST})
        request_id = submitted.json()["request_id"]
        path = f"/v2/requests/{request_id}/events"
        with http.stream("GET", path) as first, http.stream("GET", path) as second:
            kept = []  # the lines iterators: httpx closes a response whose iterator is dropped
            for stream in (first, second):
                assert stream.status_code == 200
                kept.append(stream.iter_lines())
                assert next(line for line in kept[-1] if line.startswith("data:")), "the opening status"
            refused = http.get(path, timeout=5)  # a stream accepted here would time out, not hang
            assert refused.status_code == 503
            assert "limit 2" in refused.json()["error"]
            assert int(refused.headers["retry-after"]) > 0

            started = time.monotonic()
            polled = http.get(f"/v2/requests/{request_id}/status", params={"wait": "20"})
            assert polled.status_code == 200 and polled.json()["status"] == "QUEUED"
            assert time.monotonic() - started < 5, "a long poll past the limit answers at once"
            assert http.get(f"/v2/requests/{request_id}/status").status_code == 200, "other routes work"

        def a_stream_opens() -> bool:
            with http.stream("GET", path) as again:
                return again.status_code == 200

        # The closed streams give their places back (at the latest at their next keep-alive write).
        wait_until(a_stream_opens, 40, "a stream to be accepted again", interval=0.5)
