"""A bounded schemathesis run (positive and negative cases) against /openapi.json of the running
API: no 5xx answer, and every 4xx body is JSON `{"error": "<text>"}` served as application/json.

API subprocess with a key (sent on every call), no worker, private image URLs refused: a generated
image URL is pointed at a loopback address, refused at once, so nothing on a network is touched.
"""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests import image_factory
from tests.faults import report
from tests.stack import Stack, make_stack

pytestmark = pytest.mark.e2e
EXAMPLES_PER_OPERATION = 100
SLUG = "sdxl-img2img"
UNREACHABLE_IMAGE_URL = "http://127.0.0.1:9/nothing.png"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = make_stack(SDXL_ALLOW_PRIVATE_URLS="0", SDXL_SYNC_TIMEOUT_S="5")
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def api_key(stack) -> str:
    return stack.create_key(name="schemathesis")


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def queued_id(stack, api_key) -> str:
    """A real request, QUEUED for good (no worker), for the operations that read or cancel one."""
    image = base64.b64encode(image_factory.png(96, 96)).decode()
    response = requests.post(
        f"{stack.base_url}/v2/{SLUG}",
        json={"image": image, "prompt": "p", "base_model": "tiny"},
        headers={"x-api-key": api_key},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


@pytest.fixture(scope="module")
def api_schema(stack):
    return schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")


def keep_offline(case) -> None:
    """A generated image that names a URL goes to a refused loopback address instead."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("image"), str) and "://" in body["image"]:
        body["image"] = UNREACHABLE_IMAGE_URL


def asked_wait_s(case) -> float:
    """The long poll a generated `?wait=` asks for (the status may rightly take that long)."""
    try:
        wait = float((case.query or {}).get("wait", 0))
    except (TypeError, ValueError):
        return 0.0
    return min(max(wait, 0.0), 60.0) if math.isfinite(wait) else 0.0


def check(case, api_key: str, session: requests.Session, seen: Counter) -> None:
    keep_offline(case)
    started = time.monotonic()
    response = case.call(headers={"x-api-key": api_key}, session=session, timeout=30)
    elapsed = time.monotonic() - started
    seen[response.status_code] += 1
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]!r}"
    # This stack has no worker: /readyz is 503 by contract (CONTRACT 7), and so is a valid v1 request,
    # at once, charging nothing (CONTRACT 4).
    no_worker = response.status_code == 503 and (
        case.path == "/readyz" or (case.path == "/v1/{slug}" and "no worker is serving" in response.text)
    )
    assert response.status_code < 500 or no_worker, where
    assert elapsed < 5 + asked_wait_s(case), f"{where} took {elapsed:.2f} s"
    if response.status_code >= 400:
        assert response.headers["content-type"] == ["application/json"], where  # schemathesis: lists
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], where


def variants(path: str, queued_id: str) -> list[dict[str, str]]:
    """Path parameters to try: random ones (mostly 404s), then the real slug and a real request id,
    so that bodies reach the parser and validation, and reads reach a real record."""
    pinned = {}
    if "{slug}" in path:
        pinned["slug"] = SLUG
    if "{request_id}" in path:
        pinned["request_id"] = queued_id
    return [{}, pinned] if pinned else [{}]


# schemathesis' own pytest integration (`schemathesis.pytest.from_fixture(...).parametrize()`) reads
# `request.node._nodeid`, which pytest 9.2 no longer has: drive its hypothesis strategies directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_json_errors(api_schema, api_key, http_session, queued_id, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8  # v1, v2, status, result, cancel, outputs, healthz, readyz
    started = time.monotonic()
    seen: Counter = Counter()
    for operation in operations:
        for path_parameters in variants(operation.path, queued_id):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking hunt on a 2-core box
            )
            def run(case) -> None:
                check(case, api_key, http_session, seen)

            try:
                run()
            except Unsatisfiable:
                # Nothing left to make invalid (no parameters, or only pinned ones): no negative case.
                assert mode is GenerationMode.NEGATIVE, operation.label
    report(
        f"schemathesis {mode.value}: {len(operations)} operations, <= {EXAMPLES_PER_OPERATION} examples each",
        f"{sum(seen.values())} calls, statuses {dict(sorted(seen.items()))}",
        time.monotonic() - started,
    )
