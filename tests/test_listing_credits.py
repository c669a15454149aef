"""`GET /v1/credits` and `GET /v2/requests` (CONTRACT 10, "Account" and "Listing") through the running
stack: a real API and worker on a real Redis."""

from __future__ import annotations

import httpx
import pytest

from tests.faults import wait_request_end
from tests.stack import start_full_stack
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
        assert http.get("/v1/credits").json()["credits"] == {"remaining": 5, "used": 5}
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
