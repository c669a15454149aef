"""`sdxl-img2img keys ...` through the real console script, as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from app.core import api_keys
from app.core.admission import authenticate
from app.core.errors import Unauthorized
from app.core.redis_keys import RedisKeys
from app.core.settings import Settings
from tests.conftest import REDIS_URL, REPO_ROOT

CLI = REPO_ROOT / ".venv" / "bin" / "sdxl-img2img"


@pytest.fixture
def cli(redis_prefix: str, tmp_path: Path):
    env = {**os.environ, "REDIS_URL": REDIS_URL, "SDXL_REDIS_PREFIX": redis_prefix}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # cwd: an empty folder, so that no stray .env changes the settings under test
        return subprocess.run(
            [str(CLI), "keys", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    return run


def test_create_list_add_credits_revoke(cli, redis_client: redis.Redis, settings: Settings) -> None:
    keys = RedisKeys(settings.redis_prefix)
    created = cli(
        "create", "--name", "alice", "--credits", "5", "--rpm", "7", "--models", "tiny, realvis", "--json"
    )
    assert created.returncode == 0, created.stderr
    assert len(created.stdout.splitlines()) == 1
    data = json.loads(created.stdout)
    assert re.fullmatch(r"SG_[0-9a-f]{32}", data["key"])
    assert {k: data[k] for k in ("name", "credits", "rpm", "models")} == {
        "name": "alice",
        "credits": 5,
        "rpm": 7,
        "models": ["tiny", "realvis"],
    }
    assert api_keys.get_key(redis_client, keys, data["key"]).id == data["id"]

    plain = cli("create", "--name", "bob")
    assert plain.returncode == 0, plain.stderr
    bob_key = plain.stdout.strip()  # stdout is just the key, so `KEY=$(... keys create ...)` works
    assert re.fullmatch(r"SG_[0-9a-f]{32}", bob_key)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["name"] for row in rows] == ["alice", "bob"]
    assert rows[0]["id"] == data["id"] and rows[1]["credits"] is None and rows[1]["models"] is None
    assert data["key"] not in listed.stdout and bob_key not in listed.stdout
    table = cli("list")
    assert table.returncode == 0 and data["id"] in table.stdout and "unlimited" in table.stdout

    added = cli("add-credits", data["id"], "10", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["credits"] == 15
    assert api_keys.get_key(redis_client, keys, data["id"]).credits == 15

    revoked = cli("revoke", bob_key, "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["disabled"] is True

    async def auth(key: str) -> None:
        r = aioredis.Redis.from_url(settings.redis_url)
        try:
            await authenticate(r, keys, settings, key)
        finally:
            await r.aclose()

    with pytest.raises(Unauthorized):
        asyncio.run(auth(bob_key))
    asyncio.run(auth(data["key"]))  # the other key still works


def test_errors_go_to_stderr_with_exit_code_1(cli) -> None:
    unknown = cli("revoke", "key_00000000")
    assert unknown.returncode == 1
    assert unknown.stdout == "" and "No API key matches" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    assert cli("add-credits", "key_00000000", "3", "--json").returncode == 1
    unlimited = json.loads(cli("create", "--name", "u", "--json").stdout)
    refused = cli("add-credits", unlimited["id"], "3")
    assert refused.returncode == 1 and "unlimited" in refused.stderr
    bad = cli("create", "--name", "x", "--rpm", "0")
    assert bad.returncode == 1 and "rpm" in bad.stderr


def test_unreachable_redis_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", "SDXL_REDIS_PREFIX": "unused"}
    result = subprocess.run(
        [str(CLI), "keys", "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr and "Traceback" not in result.stderr
