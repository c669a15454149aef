"""Hostile bodies against the running API (CONTRACT 2, 6): over the size limit is 413 (declared
Content-Length or chunked without one); malformed or non-object JSON, wrong content types, broken
multipart, empty bodies and invalid UTF-8 are 400; never a 500, always a JSON `{"error": ...}`,
always fast. Also, through HTTP: an SSRF URL and a decompression bomb are 400 at submission, and
past SDXL_MAX_QUEUE waiting jobs a submission is 429 with Retry-After.

One API subprocess (no worker: nothing here should ever run), with a key, a 64 KiB body limit, a
queue of 3 and private URLs refused (SDXL_ALLOW_PRIVATE_URLS off, unlike the other e2e stacks).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import image_factory
from tests.faults import report
from tests.stack import make_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"
MAX_BODY = 65_536
MAX_QUEUE = 3
BOUND_S = 2.0
JSON = {"content-type": "application/json"}
IMAGE = base64.b64encode(image_factory.png(96, 96)).decode()
VALID = {"image": IMAGE, "prompt": "p", "base_model": "tiny", "num_inference_steps": 20}


@pytest.fixture(scope="module")
def stack():
    stack = make_stack(
        SDXL_MAX_BODY_BYTES=str(MAX_BODY), SDXL_MAX_QUEUE=str(MAX_QUEUE), SDXL_ALLOW_PRIVATE_URLS="0"
    )
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def http(stack) -> Iterator[httpx.Client]:
    key = stack.create_key(name="hostile")
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=30) as client:
        yield client


def send(http: httpx.Client, name: str, path: str = f"/v2/{SLUG}", **request) -> httpx.Response:
    started = time.monotonic()
    response = http.post(path, **request)
    elapsed = time.monotonic() - started
    report(name, response.status_code, elapsed)
    assert response.headers["content-type"] == "application/json", response.text[:200]
    assert isinstance(response.json().get("error"), str) and response.json()["error"]
    assert elapsed < BOUND_S, f"{name} took {elapsed:.2f} s"
    return response


def chunks(total: int, size: int = 8192) -> Iterator[bytes]:
    """A body streamed without Content-Length (Transfer-Encoding: chunked)."""
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size


def multipart(boundary: str, *parts: bytes, close: bool = True) -> bytes:
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def field(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'
    if filename:
        disposition += f'; filename="{filename}"\r\nContent-Type: image/png'
    return disposition.encode() + b"\r\n\r\n" + value


def form(boundary: str = "b0undary") -> dict[str, str]:
    return {"content-type": f"multipart/form-data; boundary={boundary}"}


# Factories: a streamed body (a generator) can be sent once only.
TOO_LARGE = {
    "declared Content-Length over the limit": lambda: {
        "content": b"{" + b" " * MAX_BODY + b"}",
        "headers": JSON,
    },
    "chunked body without length over the limit": lambda: {"content": chunks(4 * MAX_BODY), "headers": JSON},
    "multipart upload over the limit": lambda: {
        "files": {"image": ("big.png", b"\x89PNG" + b"\x00" * (2 * MAX_BODY), "image/png")},
        "data": {"prompt": "p"},
    },
}


@pytest.mark.parametrize("name", list(TOO_LARGE))
@pytest.mark.parametrize("path", [f"/v2/{SLUG}", f"/v1/{SLUG}"])
def test_oversized_bodies_are_413(http, name, path):
    response = send(http, f"body: {name} ({path[:3]})", path, **TOO_LARGE[name]())
    assert response.status_code == 413
    assert str(MAX_BODY) in response.json()["error"]


BAD = {
    "malformed JSON": ({"content": b'{"prompt": "a", "image": ', "headers": JSON}, "not valid JSON"),
    "JSON with a trailing comma": ({"content": b'{"prompt": "a",}', "headers": JSON}, "not valid JSON"),
    "JSON list": ({"content": b'[{"prompt": "a"}]', "headers": JSON}, "JSON object"),
    "JSON string": ({"content": b'"a prompt"', "headers": JSON}, "JSON object"),
    "JSON number": ({"content": b"42", "headers": JSON}, "JSON object"),
    "JSON null": ({"content": b"null", "headers": JSON}, "JSON object"),
    "JSON true": ({"content": b"true", "headers": JSON}, "JSON object"),
    "JSON nested 30000 deep": ({"content": b"[" * 30_000 + b"]" * 30_000, "headers": JSON}, "nested"),
    "JSON NaN": ({"content": b'{"image": "x", "prompt": "a", "guidance_scale": NaN}', "headers": JSON}, None),
    "JSON 1e999": ({"content": b'{"image": "x", "prompt": "a", "strength": 1e999}', "headers": JSON}, None),
    "invalid UTF-8 in JSON": ({"content": b'{"prompt": "\xff\xfe", "image": "x"}', "headers": JSON}, "JSON"),
    "lone surrogate escape": ({"content": b'{"prompt": "\\ud800", "image": "x"}', "headers": JSON}, None),
    "Content-Type text/plain": (
        {"content": b'{"prompt": "a"}', "headers": {"content-type": "text/plain"}},
        "Content-Type",
    ),
    "Content-Type application/xml": (
        {"content": b"<prompt>a</prompt>", "headers": {"content-type": "application/xml"}},
        "Content-Type",
    ),
    "empty body, JSON type": ({"content": b"", "headers": JSON}, "empty"),
    "empty body, no type": ({"content": b""}, "empty"),
    "whitespace body": ({"content": b" \r\n\t ", "headers": JSON}, "empty"),
    "multipart, boundary does not match": (
        {"content": multipart("other", field("prompt", b"a")), "headers": form()},
        "form",
    ),
    "multipart without boundary": (
        {
            "content": multipart("b0undary", field("prompt", b"a")),
            "headers": {"content-type": "multipart/form-data"},
        },
        "form",
    ),
    "multipart truncated mid-file": (
        {
            "content": multipart(
                "b0undary", field("image", image_factory.png(96, 96)[:50], "a.png"), close=False
            ),
            "headers": form(),
        },
        None,
    ),
    "multipart truncated mid-header": (
        {"content": b"--b0undary\r\nContent-Disposition: form-da", "headers": form()},
        None,
    ),
    "multipart with two files": (
        {
            "content": multipart("b0undary", field("image", b"1", "a.png"), field("image", b"2", "b.png")),
            "headers": form(),
        },
        "files",
    ),
    "multipart file in a text field": (
        {"content": multipart("b0undary", field("prompt", b"a", "p.png")), "headers": form()},
        "prompt",
    ),
    "multipart with 200 fields": (
        {"content": multipart("b0undary", *[field(f"f{i}", b"x") for i in range(200)]), "headers": form()},
        "fields",
    ),
    "multipart invalid UTF-8 field": (
        {
            "content": multipart("b0undary", field("prompt", b"\xff\xfe"), field("image", b"\xff\xfe")),
            "headers": form(),
        },
        None,
    ),
    "urlencoded with bad percent escapes": (
        {
            "content": b"prompt=%ff%zz&image=%00",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
        None,
    ),
    "image is an object": ({"json": {"prompt": "a", "image": {"url": "x"}}}, "image"),
    "seed of 500 digits": ({"json": {"prompt": "a", "image": IMAGE, "seed": int("9" * 500)}}, "seed"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_broken_bodies_are_400_json(http, name):
    request, expected = BAD[name]
    response = send(http, f"body: {name}", **request)
    assert response.status_code == 400, response.text
    if expected:
        assert expected in response.json()["error"]


def test_ssrf_url_is_400_at_submission(http):
    body = {**VALID, "image": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}
    response = send(http, "image URL: cloud metadata address (SSRF)", json=body)
    assert response.status_code == 400 and "not a public address" in response.json()["error"]
    body = {**VALID, "image": "http://0x7f.1/"}
    response = send(http, "image URL: loopback in hex (SSRF)", json=body)
    assert response.status_code == 400 and "not a public address" in response.json()["error"]


def test_decompression_bomb_is_400_at_submission(http):
    bomb = base64.b64encode(image_factory.png_header_bomb()).decode()
    response = send(http, "image: PNG header claiming 100000x100000 (bomb)", json={**VALID, "image": bomb})
    assert response.status_code == 400 and "pixels" in response.json()["error"]


def test_full_queue_is_429_with_retry_after(http, stack):
    for _ in range(MAX_QUEUE):
        assert http.post(f"/v2/{SLUG}", json=VALID).json()["status"] == "QUEUED"
    response = send(http, f"overload: submission past SDXL_MAX_QUEUE={MAX_QUEUE}", json=VALID)
    assert response.status_code == 429 and "queue" in response.json()["error"].lower()
    assert int(response.headers["retry-after"]) >= 1
    assert "x-rate-limit-reset-at-utc" in response.headers
    assert stack.redis().llen(stack.keys.rq_queue_key("tiny")) == MAX_QUEUE
