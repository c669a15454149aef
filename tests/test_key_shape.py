"""Keys of Segmind's shape (CONTRACT 1): `keys create` makes `SG_` + 32 lowercase hex digits, which
a tool that checks a Segmind key's format accepts; keys of the older `sk-sdxl-` shape keep working.
The real CLI makes the key, a real API subprocess authenticates both shapes."""

from __future__ import annotations

import os
import re
import secrets
import subprocess

import httpx
import pytest

from app.core import api_keys
from tests.test_keys_cli import CLI

pytestmark = pytest.mark.e2e
# The check of a third-party tool (an MCP server for Segmind) that refused our older keys.
SEGMIND_KEY_FORMAT = re.compile(r"^(sg_|SG_)[a-zA-Z0-9]{12,}$")


def credits(stack, key: str) -> httpx.Response:
    return httpx.get(f"{stack.base_url}/v1/credits", headers={"x-api-key": key}, timeout=30)


def test_new_keys_have_segmind_shape_and_work(stack, tmp_path):
    made = subprocess.run(
        [str(CLI), "keys", "create", "--name", "shaped", "--credits", "3"],
        env={**os.environ, **stack.env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"SG_[0-9a-f]{32}", key), key
    assert SEGMIND_KEY_FORMAT.match(key)
    assert credits(stack, key).status_code == 200
    assert credits(stack, key).json()["credits"]["remaining"] == 3
    assert len({api_keys.generate_key() for _ in range(1000)}) == 1000


def test_keys_of_the_older_shape_keep_working(stack):
    older = "sk-sdxl-" + secrets.token_urlsafe(32)  # as `keys create` made them before
    record = api_keys._insert(
        stack.redis(), stack.keys, older, name="older", credits=2, rpm=None, models=None
    )
    assert record is not None
    response = credits(stack, older)
    assert response.status_code == 200 and response.json()["credits"]["remaining"] == 2
    assert credits(stack, "sk-sdxl-" + secrets.token_urlsafe(32)).status_code == 401
    assert credits(stack, "SG_" + secrets.token_hex(16)).status_code == 401
