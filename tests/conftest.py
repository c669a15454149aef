"""Shared fixtures: a real Redis with a unique key prefix per test, settings built for it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("SDXL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# One cache for the whole run: `tiny` is built once and reused by every test and subprocess.
TEST_CACHE_DIR = Path(os.environ.get("SDXL_TEST_CACHE_DIR", REPO_ROOT / ".cache" / "test"))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"{prefix}:*", f"rq:*{prefix}.*", f"rq:*:{prefix}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def settings(redis_prefix: str) -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        models_file=str(REPO_ROOT / "models.yaml"),
        default_base_model="tiny",
        cache_dir=str(TEST_CACHE_DIR),
        allow_private_urls=True,
    )


@pytest.fixture(scope="module")
def stack():
    """A real API subprocess on a private prefix, no worker, one per test module. Modules that need
    workers or other settings define their own `stack`, which takes precedence over this one."""
    from tests.stack import make_stack

    stack = make_stack()
    stack.start_api()
    yield stack
    stack.stop()
