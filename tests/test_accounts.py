"""The key store against a real Redis: creation, listing, revocation, credits, static keys, and
the promise that a clear key is never written to Redis."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from app.core import admission, api_keys
from app.core.api_keys import ApiKey
from app.core.errors import InvalidInput, NotFound, Unauthorized
from app.core.redis_keys import RedisKeys
from app.core.settings import Settings


@pytest.fixture
def keys(redis_prefix: str) -> RedisKeys:
    return RedisKeys(redis_prefix)


def test_create_key_returns_a_fresh_secret_and_stores_the_record(
    redis_client: redis.Redis, keys: RedisKeys
) -> None:
    key, record = api_keys.create_key(
        redis_client, keys, name="alice", credits=5, rpm=10, models=["tiny", "juggernaut"]
    )
    other, _ = api_keys.create_key(redis_client, keys, name="bob")

    assert re.fullmatch(r"SG_[0-9a-f]{32}", key)
    assert key != other
    assert re.fullmatch(r"key_[0-9a-f]{8}", record.id)
    assert (record.name, record.credits, record.rpm, record.models, record.disabled) == (
        "alice",
        5,
        10,
        ("tiny", "juggernaut"),
        False,
    )
    # Stored under the hash of the key, found again by id and by clear key.
    assert redis_client.exists(keys.api_key(api_keys.hash_key(key)))
    assert api_keys.get_key(redis_client, keys, record.id) == record
    assert api_keys.get_key(redis_client, keys, key) == record


def test_unlimited_fields_are_absent_in_redis(redis_client: redis.Redis, keys: RedisKeys) -> None:
    key, record = api_keys.create_key(redis_client, keys, name="open")
    stored = redis_client.hgetall(keys.api_key(api_keys.hash_key(key)))
    assert b"credits" not in stored and b"rpm" not in stored and b"models" not in stored
    assert (record.credits, record.rpm, record.models) == (None, None, None)


def test_list_keys_oldest_first(redis_client: redis.Redis, keys: RedisKeys) -> None:
    created = [api_keys.create_key(redis_client, keys, name=f"k{i}")[1] for i in range(3)]
    assert [rec.id for rec in api_keys.list_keys(redis_client, keys)] == [rec.id for rec in created]


def test_create_key_refuses_an_existing_key_and_bad_values(
    redis_client: redis.Redis, keys: RedisKeys
) -> None:
    api_keys.create_key(redis_client, keys, name="a", key="my-own-key", credits=3)
    with pytest.raises(InvalidInput, match="already exists"):
        api_keys.create_key(redis_client, keys, name="b", key="my-own-key")
    # The first key's balance survived the attempt.
    assert api_keys.get_key(redis_client, keys, "my-own-key").credits == 3
    with pytest.raises(InvalidInput, match="rpm"):
        api_keys.create_key(redis_client, keys, name="x", rpm=0)
    with pytest.raises(InvalidInput, match="credits"):
        api_keys.create_key(redis_client, keys, name="x", credits=-1)
    with pytest.raises(InvalidInput, match="name"):
        api_keys.create_key(redis_client, keys, name="  ")
    assert len(api_keys.list_keys(redis_client, keys)) == 1


def test_add_credits(redis_client: redis.Redis, keys: RedisKeys) -> None:
    key, record = api_keys.create_key(redis_client, keys, name="a", credits=2)
    assert api_keys.add_credits(redis_client, keys, record.id, 5).credits == 7
    assert api_keys.add_credits(redis_client, keys, key, 1).credits == 8
    with pytest.raises(InvalidInput, match="1 or more"):
        api_keys.add_credits(redis_client, keys, record.id, 0)
    _, unlimited = api_keys.create_key(redis_client, keys, name="u")
    with pytest.raises(InvalidInput, match="unlimited"):
        api_keys.add_credits(redis_client, keys, unlimited.id, 5)
    assert api_keys.get_key(redis_client, keys, unlimited.id).credits is None
    with pytest.raises(NotFound):
        api_keys.add_credits(redis_client, keys, "key_00000000", 5)


def test_revoke_marks_disabled_and_unknown_is_not_found(redis_client: redis.Redis, keys: RedisKeys) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a")
    revoked = api_keys.revoke_key(redis_client, keys, record.id)
    assert revoked.disabled and revoked.id == record.id
    assert [rec.disabled for rec in api_keys.list_keys(redis_client, keys)] == [True]
    key2, _ = api_keys.create_key(redis_client, keys, name="b")
    assert api_keys.revoke_key(redis_client, keys, key2).disabled  # by clear key too
    with pytest.raises(NotFound) as caught:
        api_keys.revoke_key(redis_client, keys, "sk-sdxl-not-a-real-key-0123456789")
    assert "not-a-real-key-0123456789" not in caught.value.message  # a secret is not echoed whole


def test_ensure_static_keys_is_idempotent_and_keeps_revocations(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    api_keys.ensure_static_keys(redis_client, keys, ["static-one", "static-two", " "])
    api_keys.ensure_static_keys(redis_client, keys, ["static-one", "static-two"])
    records = api_keys.list_keys(redis_client, keys)
    assert len(records) == 2
    assert all(rec.credits is None and rec.rpm is None and rec.models is None for rec in records)

    api_keys.revoke_key(redis_client, keys, "static-one")
    api_keys.ensure_static_keys(redis_client, keys, ["static-one", "static-two"])
    assert api_keys.get_key(redis_client, keys, "static-one").disabled

    async def check() -> ApiKey:
        r = aioredis.Redis.from_url(settings.redis_url)
        try:
            with pytest.raises(Unauthorized):
                await admission.authenticate(r, keys, settings, "static-one")
            return await admission.authenticate(r, keys, settings, "static-two")
        finally:
            await r.aclose()

    assert asyncio.run(check()).name == "SDXL_API_KEYS"


def _everything_stored(client: redis.Redis, prefix: str) -> list[bytes]:
    """Every key name, field, member and value under the prefix, as bytes."""
    found: list[bytes] = []
    for name in client.scan_iter(match=f"{prefix}*", count=1000):
        found.append(name)
        kind = client.type(name)
        if kind == b"string":
            found.append(client.get(name))
        elif kind == b"hash":
            for field, value in client.hgetall(name).items():
                found += [field, value]
        elif kind == b"zset":
            found += [member for member, _ in client.zrange(name, 0, -1, withscores=True)]
        elif kind == b"list":
            found += client.lrange(name, 0, -1)
        elif kind == b"set":
            found += list(client.smembers(name))
        else:
            raise AssertionError(f"unexpected type {kind!r} for {name!r}")
    return found


def test_clear_key_appears_nowhere_in_redis(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    limited, limited_rec = api_keys.create_key(
        redis_client, keys, name="a", credits=5, rpm=10, models=["tiny"]
    )
    unlimited, _ = api_keys.create_key(redis_client, keys, name="b")
    api_keys.ensure_static_keys(redis_client, keys, ["static-secret-value"])
    api_keys.add_credits(redis_client, keys, limited, 1)
    request_id = str(uuid.uuid4())

    async def use_keys() -> None:
        r = aioredis.Redis.from_url(settings.redis_url)
        try:
            for key in (limited, unlimited, "static-secret-value"):
                await admission.authenticate(r, keys, settings, key)
            record = await admission.authenticate(r, keys, settings, limited)
            await admission.admit(r, keys, settings, record, request_id=request_id, cost=2, queue_keys=[])
            await admission.refund(r, keys, request_id)
        finally:
            await r.aclose()

    asyncio.run(use_keys())
    stored = _everything_stored(redis_client, keys.prefix)
    assert any(limited_rec.id.encode() in item for item in stored)  # the scan does see our data
    assert redis_client.exists(keys.rate(limited_rec.id))
    for secret in (limited, unlimited, "static-secret-value"):
        # The whole key, and its random part alone, in any key name, field, member or value.
        for needle in {secret, secret.removeprefix(api_keys.KEY_PREFIX)}:
            assert not [item for item in stored if needle.encode() in item], secret
