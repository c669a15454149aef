"""`Idempotency-Key` (CONTRACT 10) through the running stack: duplicates, sequential or 20 at the same
instant, make one request and one charge and all get its id; v1 duplicates wait for its result; a
different body is 422; a refused first submission frees the key; the record expires with the request."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults import wait_request_end, wait_until
from tests.stack import make_stack, start_full_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e
MISMATCH = {"error": "Idempotency-Key was used with a different request body"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_full_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


def post(stack, key, idempotency_key, body, version="v2"):
    headers = {"x-api-key": key}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return httpx.post(f"{stack.base_url}/{version}/{SLUG}", json=body, headers=headers, timeout=120)


def credits(stack, key) -> dict:
    return httpx.get(f"{stack.base_url}/v1/credits", headers={"x-api-key": key}, timeout=10).json()["credits"]


def requests_in_redis(stack) -> int:
    return sum(1 for _ in stack.redis().scan_iter(match=f"{stack.prefix}:req:*", count=1000))


def test_a_sequential_duplicate_answers_the_first_request_and_charges_once(stack):
    key = stack.create_key(name="seq", credits=10)
    body = {"image": IMAGE, "prompt": "once", "samples": 2, **FAST}
    first = post(stack, key, "order-1", body)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    request_id = first.json()["request_id"]
    second = post(stack, key, "order-1", body)
    assert second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["x-request-id"] == request_id
    assert second.headers["idempotent-replayed"] == "true"
    assert credits(stack, key) == {"remaining": 8, "used": 2}
    # Another Idempotency-Key (or none) is another request.
    third = post(stack, key, "order-2", body)
    assert third.json()["request_id"] != request_id
    assert credits(stack, key) == {"remaining": 6, "used": 4}


def test_twenty_concurrent_duplicates_make_one_request_and_one_charge(stack):
    key = stack.create_key(name="burst", credits=100)
    body = {"image": IMAGE, "prompt": "burst", **FAST}
    before = requests_in_redis(stack)
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: post(stack, key, "burst-key", body), range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    ids = {a.json()["request_id"] for a in answers}
    assert len(ids) == 1
    assert sum(1 for a in answers if "idempotent-replayed" not in a.headers) == 1
    assert requests_in_redis(stack) == before + 1
    assert credits(stack, key) == {"remaining": 99, "used": 1}


def test_v1_duplicates_wait_for_the_first_result(stack):
    key = stack.create_key(name="v1", credits=10)
    body = {"image": IMAGE, "prompt": "v1 twice", "seed": 3, **FAST}
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda _: post(stack, key, "v1-key", body, "v1"), range(3)))
    assert [a.status_code for a in answers] == [200] * 3
    assert len({a.headers["x-request-id"] for a in answers}) == 1
    assert len({a.content for a in answers}) == 1 and answers[0].headers["content-type"] == "image/jpeg"
    assert credits(stack, key) == {"remaining": 9, "used": 1}
    # A v1 retry of a v2 submission waits for that request's result too.
    queued = post(stack, key, "v2-then-v1", body).json()["request_id"]
    again = post(stack, key, "v2-then-v1", body, "v1")
    assert again.status_code == 200 and again.headers["x-request-id"] == queued
    assert again.headers["x-seed-value"] == "3"
    assert credits(stack, key) == {"remaining": 8, "used": 2}


def test_the_same_key_with_another_body_is_422(stack):
    key = stack.create_key(name="mismatch", credits=10)
    body = {"image": IMAGE, "prompt": "first", **FAST}
    request_id = post(stack, key, "k", body).json()["request_id"]
    other = post(stack, key, "k", {**body, "prompt": "second"})
    assert other.status_code == 422 and other.json() == MISMATCH
    assert post(stack, key, "k", {**body, "seed": 5}, "v1").json() == MISMATCH
    # Key order is not the body: the same fields in another order are the same body.
    reordered = post(stack, key, "k", dict(reversed(list(body.items()))))
    assert reordered.json()["request_id"] == request_id
    assert credits(stack, key)["used"] == 1
    # The same Idempotency-Key of another API key is another request.
    stranger = stack.create_key(name="stranger")
    assert post(stack, stranger, "k", {**body, "prompt": "second"}).json()["request_id"] != request_id


def test_a_refused_first_submission_frees_the_key(stack):
    key = stack.create_key(name="refused", credits=1)
    bad = post(stack, key, "retry-me", {"image": "bm90IGFuIGltYWdl", "prompt": "p", **FAST})
    assert bad.status_code == 400
    short = post(stack, key, "retry-me", {"image": IMAGE, "prompt": "p", "samples": 2, **FAST})
    assert short.status_code == 406
    good = post(stack, key, "retry-me", {"image": IMAGE, "prompt": "p", **FAST})
    assert good.status_code == 200 and "idempotent-replayed" not in good.headers
    assert credits(stack, key) == {"remaining": 0, "used": 1}


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_bad_header_is_400(stack, value):
    key = stack.create_key(name="bad-header")
    headers = {"x-api-key": key, "Idempotency-Key": value.encode("latin-1")}
    answer = httpx.post(f"{stack.base_url}/v2/{SLUG}", json={"prompt": "p"}, headers=headers, timeout=10)
    assert answer.status_code == 400
    assert answer.json() == {"error": "Idempotency-Key must be 1 to 255 printable ASCII characters"}
    assert post(stack, key, "x" * 255, {"image": IMAGE, "prompt": "p", **FAST}).status_code == 200


def test_the_record_expires_with_the_request():
    stack = make_stack(SDXL_RESULT_TTL_S="2")  # no worker: `tiny` requests wait, a cancel ends them
    try:
        stack.start_api()
        key = stack.create_key(name="ttl")
        body = {"image": IMAGE, "prompt": "ttl", **FAST}
        first = post(stack, key, "ttl-key", body).json()["request_id"]
        [record] = list(stack.redis().scan_iter(match=f"{stack.prefix}:idem:*"))
        assert 0 < stack.redis().ttl(record) <= 3600 + 2  # the waiting request's own TTL
        assert post(stack, key, "ttl-key", body).json()["request_id"] == first
        with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=10) as http:
            assert http.delete(f"/v2/requests/{first}").status_code == 202
            wait_request_end(lambda: http.get(f"/v2/requests/{first}/status"))
            ended = time.monotonic()
            assert 0 < stack.redis().pttl(record) <= 2000, "its end gave the record the result TTL"
            wait_until(lambda: http.get(f"/v2/requests/{first}").status_code == 404, 10, "the result TTL")
        assert time.monotonic() - ended < 5
        # Its request gone, the key is free: the same submission is a new request.
        again = post(stack, key, "ttl-key", body)
        assert again.status_code == 200 and "idempotent-replayed" not in again.headers
        assert again.json()["request_id"] != first
    finally:
        stack.stop()
