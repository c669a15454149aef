"""`GET /v1/credits` and `GET /v2/requests` (CONTRACT 10, "Account" and "Listing") through the running
stack: a real API and worker on a real Redis."""

from __future__ import annotations

import httpx
import pytest

from tests.faults import wait_request_end, wait_until
from tests.stack import make_stack, start_full_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_full_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


def client(stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=60)


def body(**fields) -> dict:
    return {"image": IMAGE, "prompt": "p", **FAST, **fields}


def test_credits_of_a_limited_key_count_what_was_spent_and_not_what_was_refunded(stack):
    key = stack.create_key(name="acct", credits=10, rpm=100, models=["tiny", "broken"], concurrency=2)
    with client(stack, key) as http:
        assert http.get("/v1/credits").json() == {
            "credits": {"remaining": 10, "used": 0},
            "name": "acct",
            "rpm": 100,
            "models": ["tiny", "broken"],
            "concurrency": 2,
        }
        assert http.post(f"/v1/{SLUG}", json=body(samples=2)).status_code == 200
        failed = http.post(f"/v2/{SLUG}", json=body(base_model="broken", samples=3)).json()["request_id"]
        # Reserved while it runs; the worker may have failed it (refunded) before this read already.
        credits = http.get("/v1/credits").json()["credits"]
        status = http.get(f"/v2/requests/{failed}/status").json()["status"]
        assert credits == {"remaining": 5, "used": 5} or (
            credits == {"remaining": 8, "used": 2} and status == "FAILED"
        )
        wait_request_end(lambda: http.get(f"/v2/requests/{failed}/status"))
        # FAILED: refunded in the step that ended it, so not spent either
        assert http.get("/v1/credits").json()["credits"] == {"remaining": 8, "used": 2}


def test_credits_of_an_unlimited_key_are_null_and_used_still_counts(stack):
    key = stack.create_key(name="free")
    with client(stack, key) as http:
        assert http.post(f"/v1/{SLUG}", json=body()).status_code == 200
        answer = http.get("/v1/credits")
        assert answer.status_code == 200
        assert answer.json() == {
            "credits": {"remaining": None, "used": 1},
            "name": "free",
            "rpm": None,
            "models": None,
            "concurrency": None,
        }


def test_credits_need_a_valid_key(stack):
    answer = httpx.get(f"{stack.base_url}/v1/credits", timeout=10)
    assert answer.status_code == 401
    assert answer.json() == {"error": "Missing Authorization or x-api-key in header"}
    answer = httpx.get(f"{stack.base_url}/v1/credits", headers={"x-api-key": "sk-nope"}, timeout=10)
    assert answer.status_code == 401 and "invalid" in answer.json()["error"]


def submit(http, **fields) -> str:
    answer = http.post(f"/v2/{SLUG}", json=body(**fields))
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def test_listing_is_the_keys_own_requests_newest_first_page_by_page(stack):
    key = stack.create_key(name="lister")
    with client(stack, key) as http:
        ids = [submit(http, base_model="idle") for _ in range(5)]
        first = http.get("/v2/requests", params={"limit": 2}).json()
        assert [r["request_id"] for r in first["requests"]] == ids[::-1][:2]
        assert all(r["status"] == "QUEUED" and "queue_position" in r for r in first["requests"])
        assert first["requests"][0]["created_at"].startswith("20")
        second = http.get("/v2/requests", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        third = http.get("/v2/requests", params={"limit": 2, "cursor": second["next_cursor"]}).json()
        assert [r["request_id"] for r in second["requests"] + third["requests"]] == ids[::-1][2:]
        assert third["next_cursor"] is None
        everything = http.get("/v2/requests").json()  # default limit 20
        assert [r["request_id"] for r in everything["requests"]] == ids[::-1]
        assert everything["next_cursor"] is None
        for request_id in ids:
            assert http.delete(f"/v2/requests/{request_id}").status_code == 202
    with client(stack, stack.create_key(name="someone else")) as http:
        assert http.get("/v2/requests").json() == {"requests": [], "next_cursor": None}


def test_listing_filters_by_status(stack):
    key = stack.create_key(name="filter")
    with client(stack, key) as http:
        failed = submit(http, base_model="broken")
        completed = submit(http)
        queued = submit(http, base_model="idle")
        for request_id in (failed, completed):
            wait_request_end(lambda rid=request_id: http.get(f"/v2/requests/{rid}/status"))
        by_status = {
            status: [
                r["request_id"]
                for r in http.get("/v2/requests", params={"status": status}).json()["requests"]
            ]
            for status in ("QUEUED", "PROCESSING", "COMPLETED", "FAILED")
        }
        assert by_status == {
            "QUEUED": [queued],
            "PROCESSING": [],
            "COMPLETED": [completed],
            "FAILED": [failed],
        }
        [failed_body] = http.get("/v2/requests", params={"status": "failed", "limit": 1}).json()["requests"]
        assert failed_body["error"] and failed_body["status"] == "FAILED"
        http.delete(f"/v2/requests/{queued}")


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"status": "DONE"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_bad_listing_parameters_are_400(stack, params, named):
    with client(stack, stack.create_key(name="bad")) as http:
        answer = http.get("/v2/requests", params=params)
    assert answer.status_code == 400 and answer.json()["error"].startswith(named)


def test_the_index_expires_with_the_requests():
    # No worker: requests wait QUEUED (TTL SDXL_MAX_QUEUE_TIME_S + SDXL_RESULT_TTL_S = 3 s); a
    # cancel ends one (TTL 1 s).
    stack = make_stack(SDXL_RESULT_TTL_S="1", SDXL_MAX_QUEUE_TIME_S="2")
    try:
        stack.start_api()
        key = stack.create_key(name="ttl")
        with client(stack, key) as http:
            kept, cancelled = submit(http), submit(http)
            [index] = list(stack.redis().scan_iter(match=f"{stack.prefix}:keyreqs:*"))
            assert 0 < stack.redis().ttl(index) <= 3
            assert http.delete(f"/v2/requests/{cancelled}").status_code == 202
            wait_until(lambda: http.get(f"/v2/requests/{cancelled}").status_code == 404, 10, "its TTL")
            listed = http.get("/v2/requests").json()["requests"]
            assert [r["request_id"] for r in listed] == [kept]
            assert stack.redis().zrange(index, 0, -1) == [kept.encode()], "the expired entry left the index"
            wait_until(lambda: not stack.redis().exists(index), 10, "the index to expire")
            assert http.get("/v2/requests").json() == {"requests": [], "next_cursor": None}
    finally:
        stack.stop()
