"""`lua_scripts.run`: one EVALSHA per call on plain clients, and a script Redis no longer holds (a
SCRIPT FLUSH, a restart without persistence) loaded again on the spot, on sync and asyncio clients
and on pipelines. On a private Redis: SCRIPT FLUSH would touch every other test's scripts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

from app.core import lua_scripts
from tests.private_redis import PrivateRedis, running_private_redis

KEYS = {"step_times": "lua-calls:step_times"}
ARGS = {"field": "tiny:24", "seconds": 0.5, "weight": 0.2, "ttl": 60}


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    yield from running_private_redis()


def commands_seen(client: redis.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


def test_sync_client_sends_one_evalsha_and_loads_a_flushed_script_again(private_redis):
    client = redis.Redis.from_url(private_redis.url)
    lua_scripts.run(client, "step_time", keys=KEYS, args=ARGS)
    client.config_resetstat()
    lua_scripts.run(client, "step_time", keys=KEYS, args=ARGS)
    seen = commands_seen(client)
    assert seen.get("cmdstat_evalsha") == 1 and "cmdstat_script|load" not in seen, seen
    client.script_flush()
    lua_scripts.run(client, "step_time", keys=KEYS, args=ARGS)
    assert commands_seen(client).get("cmdstat_script|load") == 1
    assert client.exists(KEYS["step_times"])


def test_asyncio_client_and_pipeline_run_a_flushed_script(private_redis):
    async def calls() -> list[bool]:
        client = redis.asyncio.Redis.from_url(private_redis.url)
        try:
            await lua_scripts.run(client, "step_time", keys=KEYS, args=ARGS)
            await client.script_flush()
            await lua_scripts.run(client, "step_time", keys=KEYS, args=ARGS)
            await client.script_flush()
            async with client.pipeline(transaction=False) as pipe:
                await lua_scripts.run(pipe, "step_time", keys=KEYS, args=ARGS)  # queued, not sent
                replies = await pipe.execute()
            return [replies, await client.hget(KEYS["step_times"], ARGS["field"])]
        finally:
            await client.aclose()

    assert asyncio.run(calls()) == [[b"0.5"], b"0.5"]  # every sample 0.5: the average stays 0.5
