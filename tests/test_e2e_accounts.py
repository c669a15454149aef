"""Accounts over HTTP against the running stack: every accounts status of CONTRACT 6 with a JSON
error, refunds for FAILED and cancelled requests, isolation between keys."""

from __future__ import annotations

import httpx
import pytest

from app.core import api_keys
from tests.faults import balance
from tests.stack import make_stack, start_full_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG, wait_status

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_full_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


def post(stack, headers, body=None, version="v2"):
    body = body or {"image": IMAGE, "prompt": "p", **FAST}
    return httpx.post(f"{stack.base_url}/{version}/{SLUG}", json=body, headers=headers, timeout=60)


def test_missing_invalid_and_revoked_keys_are_401(stack):
    response = post(stack, {})
    assert response.status_code == 401
    assert response.json() == {"error": "Missing Authorization or x-api-key in header"}
    invalid = {"error": "Unauthorized. API key is invalid or may have expired"}
    assert post(stack, {"x-api-key": "sk-nope"}).json() == invalid
    key = stack.create_key(name="to-revoke")
    assert post(stack, {"Authorization": f"Bearer {key}"}).status_code == 200
    api_keys.revoke_key(stack.redis(), stack.keys, key)
    response = post(stack, {"x-api-key": key})
    assert response.status_code == 401 and response.json() == invalid


def test_key_is_checked_before_the_body(stack):
    response = httpx.post(f"{stack.base_url}/v2/{SLUG}", content=b"{not json", timeout=10)
    assert response.status_code == 401


def test_model_permission_is_403(stack):
    key = stack.create_key(name="tiny-only", models=["tiny"])
    response = post(stack, {"x-api-key": key}, {"image": IMAGE, "prompt": "p", "base_model": "idle"})
    assert response.status_code == 403 and "idle" in response.json()["error"]
    assert post(stack, {"x-api-key": key}).status_code == 200


def test_credits_406_headers_and_no_negative_balance(stack):
    key = stack.create_key(name="two-credits", credits=2)
    response = post(stack, {"x-api-key": key}, {"image": IMAGE, "prompt": "p", "samples": 3, **FAST})
    assert response.status_code == 406 and "credits" in response.json()["error"]
    response = post(stack, {"x-api-key": key}, {"image": IMAGE, "prompt": "p", "samples": 2, **FAST}, "v1")
    assert response.status_code == 200
    assert response.headers["x-cost"] == "2" and response.headers["x-remaining-credits"] == "0"
    assert post(stack, {"x-api-key": key}).status_code == 406
    assert balance(stack, key) == 0


def test_rate_limit_is_429_with_retry_headers(stack):
    key = stack.create_key(name="slow", rpm=2)
    headers = {"x-api-key": key}
    assert post(stack, headers, {"prompt": "p"}).status_code == 400  # refused ones count too
    assert post(stack, headers).status_code == 200
    response = post(stack, headers)
    assert response.status_code == 429 and "error" in response.json()
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-rate-limit-reset-at-utc"].startswith("20")


def test_failed_and_cancelled_requests_give_credits_back_once(stack):
    key = stack.create_key(name="refunds", credits=10)
    headers = {"x-api-key": key}
    failed = post(stack, headers, {"image": IMAGE, "prompt": "p", "base_model": "broken", "samples": 2})
    request_id = failed.json()["request_id"]
    assert balance(stack, key) == 8
    with httpx.Client(base_url=stack.base_url, headers=headers) as http:
        wait_status(http, request_id, {"FAILED"})
        assert balance(stack, key) == 10
        queued = post(stack, headers, {"image": IMAGE, "prompt": "p", "base_model": "idle", "samples": 3})
        assert balance(stack, key) == 7
        queued_id = queued.json()["request_id"]
        assert http.delete(f"/v2/requests/{queued_id}").status_code == 202
        assert balance(stack, key) == 10
        assert http.delete(f"/v2/requests/{queued_id}").status_code == 202  # a retried DELETE
        assert balance(stack, key) == 10
        assert http.delete(f"/v2/requests/{request_id}").status_code == 409  # ended FAILED otherwise
        assert balance(stack, key) == 10


def test_another_keys_request_is_404_everywhere(stack):
    owner, other = stack.create_key(name="owner"), stack.create_key(name="other")
    request_id = post(
        stack, {"x-api-key": owner}, {"image": IMAGE, "prompt": "p", "base_model": "idle"}
    ).json()["request_id"]
    expected = {"error": f"Request {request_id} not found"}
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": other}) as http:
        for response in (
            http.get(f"/v2/requests/{request_id}/status"),
            http.get(f"/v2/requests/{request_id}"),
            http.delete(f"/v2/requests/{request_id}"),
        ):
            assert response.status_code == 404 and response.json() == expected
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": owner}) as http:
        assert http.get(f"/v2/requests/{request_id}/status").json()["status"] == "QUEUED"
        assert http.delete(f"/v2/requests/{request_id}").status_code == 202


def test_static_keys_from_settings_are_unlimited():
    static = make_stack(SDXL_API_KEYS="sk-static-one, sk-static-two")
    try:
        static.start_api()
        static.wait_for(lambda: len(api_keys.list_keys(static.redis(), static.keys)) == 2, "the static keys")
        for key in ("sk-static-one", "sk-static-two"):
            response = post(static, {"x-api-key": key})
            assert response.status_code == 200 and "x-remaining-credits" not in response.headers
        assert post(static, {"x-api-key": "sk-static-three"}).status_code == 401
    finally:
        static.stop()


def test_thirty_concurrent_submissions_against_five_credits(stack):
    import asyncio

    key = stack.create_key(name="five", credits=5)
    body = {"image": IMAGE, "prompt": "p", "base_model": "idle"}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.base_url, headers={"x-api-key": key}, timeout=60) as http:
            responses = await asyncio.gather(*(http.post(f"/v2/{SLUG}", json=body) for _ in range(30)))
        return [response.status_code for response in responses]

    statuses = asyncio.run(burst())
    assert sorted(statuses) == [200] * 5 + [406] * 25
    assert balance(stack, key) == 0
