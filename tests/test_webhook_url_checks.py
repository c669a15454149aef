"""Invalid `webhook_url` values are a 400 at submission, naming the field (issue 10 item 11): CR/LF
(header injection into the POST), spaces and tabs, more than 2,048 characters, no http(s) host.
Against a real API subprocess; a refused submission takes no credit."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests import image_factory
from tests.faults import balance

pytestmark = pytest.mark.e2e
IMAGE = base64.b64encode(image_factory.png(96, 96)).decode()
CREDITS = 10
BAD_URLS = [
    "https://hooks.example.com/a\r\nX-Injected: 1",
    "https://hooks.example.com/a\nb",
    "https://hooks.example.com/a b",
    "https://hooks.example.com/\ta",
    "https://hooks.example.com/" + "a" * 2048,
    "ftp://hooks.example.com/a",
    "https:///no-host",
]


def submit(stack, key: str, body: dict) -> httpx.Response:
    url = f"{stack.base_url}/v2/sdxl-img2img"
    return httpx.post(url, json=body, headers={"x-api-key": key}, timeout=30)


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_webhook_url_is_a_400(stack, url):
    key = stack.create_key(name="hooks", credits=CREDITS)
    body = {"image": IMAGE, "prompt": "p", "base_model": "tiny", "webhook_url": url}
    answer = httpx.post(
        f"{stack.base_url}/v2/sdxl-img2img", json=body, headers={"x-api-key": key}, timeout=30
    )
    assert answer.status_code == 400, answer.text
    assert "webhook_url" in answer.json()["error"]
    assert balance(stack, key) == CREDITS


def test_good_webhook_url_is_accepted(stack):
    key = stack.create_key(name="hooks", credits=CREDITS)
    body = {
        "image": IMAGE,
        "prompt": "p",
        "base_model": "tiny",
        "webhook_url": "https://hooks.example.com/a?b=1",
    }
    answer = httpx.post(
        f"{stack.base_url}/v2/sdxl-img2img", json=body, headers={"x-api-key": key}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert balance(stack, key) == CREDITS - 1
