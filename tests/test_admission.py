"""Admission against a real Redis: authentication, rate limits, model permissions, credits taken
under concurrency, queue-full, the submission's writes in the same step, and exactly-once refunds."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.core import api_keys
from app.core.admission import (
    ANONYMOUS,
    QueueFull,
    Superseded,
    admit,
    authenticate,
    check_model_allowed,
    parse_api_key,
    refund,
    refund_sync,
)
from app.core.errors import Conflict, Forbidden, InsufficientCredits, MissingKey, RateLimited, Unauthorized
from app.core.redis_keys import RedisKeys, RequestField
from app.core.settings import Settings


@pytest.fixture
def keys(redis_prefix: str) -> RedisKeys:
    return RedisKeys(redis_prefix)


def with_redis(settings: Settings, body: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
    """Run `body` with a fresh async client in its own event loop."""

    async def main() -> Any:
        r = aioredis.Redis.from_url(settings.redis_url, max_connections=64)
        try:
            return await body(r)
        finally:
            await r.aclose()

    return asyncio.run(main())


def new_request() -> str:
    return str(uuid.uuid4())


# --- parse_api_key -------------------------------------------------------------------------


def test_parse_api_key_accepts_header_and_bearer() -> None:
    assert parse_api_key({"x-api-key": "k1"}) == "k1"
    assert parse_api_key({"X-API-Key": " k1 "}) == "k1"
    assert parse_api_key({"Authorization": "Bearer k2"}) == "k2"
    assert parse_api_key({"authorization": "bearer   k2"}) == "k2"
    assert parse_api_key({"x-api-key": "k1", "authorization": "Bearer k2"}) == "k1"
    assert parse_api_key({"authorization": "Basic dXNlcjpwYXNz"}) is None
    assert parse_api_key({"authorization": "Bearer "}) is None
    assert parse_api_key({"x-api-key": ""}) is None
    assert parse_api_key({}) is None


# --- authenticate --------------------------------------------------------------------------


def test_missing_unknown_and_revoked_keys(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    key, record = api_keys.create_key(redis_client, keys, name="a")

    async def body(r: aioredis.Redis) -> None:
        for missing in (None, "", "  "):
            with pytest.raises(MissingKey) as caught:
                await authenticate(r, keys, settings, missing)
            assert caught.value.message == "Missing Authorization or x-api-key in header"
            assert caught.value.status_code == 401
        with pytest.raises(Unauthorized) as caught:
            await authenticate(r, keys, settings, "sk-sdxl-unknown")
        assert caught.value.message == "Unauthorized. API key is invalid or may have expired"
        assert not isinstance(caught.value, MissingKey)

        bearer = parse_api_key({"Authorization": f"Bearer {key}"})
        assert (await authenticate(r, keys, settings, bearer)).id == record.id

        api_keys.revoke_key(redis_client, keys, record.id)
        with pytest.raises(Unauthorized) as caught:
            await authenticate(r, keys, settings, key)
        assert caught.value.message == "Unauthorized. API key is invalid or may have expired"
        with pytest.raises(Unauthorized):
            await authenticate(r, keys, settings, key, count_rate=False)

    with_redis(settings, body)


def test_authenticate_returns_the_full_record(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    key, record = api_keys.create_key(redis_client, keys, name="a", credits=4, rpm=9, models=["tiny"])
    got = with_redis(settings, lambda r: authenticate(r, keys, settings, key))
    assert got == record


def test_auth_disabled_gives_anonymous_without_a_key(settings: Settings, keys: RedisKeys) -> None:
    open_settings = settings.model_copy(update={"auth": "disabled"})
    assert with_redis(open_settings, lambda r: authenticate(r, keys, open_settings, None)) is ANONYMOUS
    assert (ANONYMOUS.credits, ANONYMOUS.rpm, ANONYMOUS.models) == (None, None, None)


# --- rate limits ---------------------------------------------------------------------------


def test_rate_limit_refuses_the_fourth_submission_with_headers(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    key, record = api_keys.create_key(redis_client, keys, name="a", rpm=3)

    async def body(r: aioredis.Redis) -> RateLimited:
        for _ in range(3):
            await authenticate(r, keys, settings, key)
        with pytest.raises(RateLimited) as caught:
            await authenticate(r, keys, settings, key)
        # Read routes authenticate without using up (or being refused by) the rate.
        for _ in range(5):
            assert (await authenticate(r, keys, settings, key, count_rate=False)).id == record.id
        return caught.value

    before = datetime.now(UTC)
    limited = with_redis(settings, body)
    assert limited.status_code == 429
    retry_after = int(limited.headers["Retry-After"])
    assert 55 <= retry_after <= 60
    reset_at = datetime.fromisoformat(limited.headers["x-rate-limit-reset-at-utc"])
    assert reset_at.tzinfo is not None
    assert 55 <= (reset_at - before).total_seconds() <= 62
    # Only the three accepted submissions are logged.
    assert redis_client.zcard(keys.rate(record.id)) == 3


def test_rate_window_slides(redis_client: redis.Redis, keys: RedisKeys, settings: Settings) -> None:
    """rpm=2 over a 2 s window: a slot frees when the oldest entry leaves, not all at once."""
    key, _ = api_keys.create_key(redis_client, keys, name="a", rpm=2)

    async def body(r: aioredis.Redis) -> list[bool]:
        async def attempt() -> bool:
            try:
                await authenticate(r, keys, settings, key, rate_window_s=2.0)
                return True
            except RateLimited:
                return False

        start = time.monotonic()
        outcomes = [await attempt()]  # t=0: a
        await asyncio.sleep(1.0)
        outcomes += [await attempt(), await attempt()]  # t=1: b accepted, then refused
        await asyncio.sleep(max(0.0, 2.15 - (time.monotonic() - start)))
        # t=2.15: a has left the window, b has not: exactly one more is accepted.
        outcomes += [await attempt(), await attempt()]
        return outcomes

    assert with_redis(settings, body) == [True, True, False, True, False]


def test_unlimited_rpm_is_never_limited(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    key, record = api_keys.create_key(redis_client, keys, name="a")

    async def body(r: aioredis.Redis) -> None:
        for _ in range(50):
            await authenticate(r, keys, settings, key)

    with_redis(settings, body)
    assert not redis_client.exists(keys.rate(record.id))


# --- model permissions ---------------------------------------------------------------------


def test_model_permissions(redis_client: redis.Redis, keys: RedisKeys) -> None:
    _, limited = api_keys.create_key(redis_client, keys, name="a", models=["tiny", "realvis"])
    check_model_allowed(limited, "tiny")
    check_model_allowed(limited, "realvis")
    with pytest.raises(Forbidden) as caught:
        check_model_allowed(limited, "juggernaut")
    assert caught.value.status_code == 403
    assert "juggernaut" in caught.value.message and "tiny, realvis" in caught.value.message
    _, everything = api_keys.create_key(redis_client, keys, name="b")
    check_model_allowed(everything, "juggernaut")
    check_model_allowed(ANONYMOUS, "juggernaut")


# --- reserve -------------------------------------------------------------------------------


def _balance(redis_client: redis.Redis, keys: RedisKeys, key_id: str) -> int | None:
    return api_keys.get_key(redis_client, keys, key_id).credits


def test_admit_takes_the_cost_and_records_it(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=5)
    request_id = new_request()
    remaining = with_redis(
        settings, lambda r: admit(r, keys, settings, record, request_id=request_id, cost=2, queue_keys=[])
    )
    assert remaining == 3 == _balance(redis_client, keys, record.id)
    stored = redis_client.hgetall(keys.request(request_id))
    assert stored[RequestField.KEY_ID.encode()] == record.id.encode()
    assert stored[RequestField.COST.encode()] == b"2"
    assert redis_client.ttl(keys.request(request_id)) == -1  # no TTL unless asked for
    other = new_request()
    with_redis(
        settings,
        lambda r: admit(
            r, keys, settings, record, request_id=other, cost=1, queue_keys=[], pending_ttl_s=600
        ),
    )
    assert 590 <= redis_client.ttl(keys.request(other)) <= 600
    # Admitting one request twice would charge twice but refund once: refused.
    with pytest.raises(Conflict):
        with_redis(
            settings,
            lambda r: admit(r, keys, settings, record, request_id=request_id, cost=2, queue_keys=[]),
        )
    assert (
        _balance(redis_client, keys, record.id) == 2
    )  # 5 - 2 - 1: the refused second admission took nothing


def test_admit_short_balance_says_needed_and_available(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=2)
    request_id = new_request()
    with pytest.raises(InsufficientCredits) as caught:
        with_redis(
            settings,
            lambda r: admit(r, keys, settings, record, request_id=request_id, cost=3, queue_keys=[]),
        )
    assert caught.value.status_code == 406
    assert "needs 3" in caught.value.message and "has 2" in caught.value.message
    assert _balance(redis_client, keys, record.id) == 2
    assert not redis_client.exists(keys.request(request_id))


def test_admit_unlimited_and_anonymous(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a")
    ids = [new_request(), new_request()]

    async def body(r: aioredis.Redis) -> list[int | None]:
        return [
            await admit(r, keys, settings, record, request_id=ids[0], cost=4, queue_keys=[]),
            await admit(r, keys, settings, ANONYMOUS, request_id=ids[1], cost=4, queue_keys=[]),
        ]

    assert with_redis(settings, body) == [None, None]
    assert _balance(redis_client, keys, record.id) is None
    assert redis_client.hget(keys.request(ids[1]), RequestField.KEY_ID) == b"anonymous"


def test_admit_refuses_a_key_revoked_after_authentication(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    key, _ = api_keys.create_key(redis_client, keys, name="a", credits=5)

    async def body(r: aioredis.Redis) -> None:
        record = await authenticate(r, keys, settings, key)
        api_keys.revoke_key(redis_client, keys, record.id)
        with pytest.raises(Unauthorized):
            await admit(r, keys, settings, record, request_id=new_request(), cost=1, queue_keys=[])

    with_redis(settings, body)
    assert api_keys.get_key(redis_client, keys, key).credits == 5


def _count(outcomes: list[Any]) -> tuple[list[int], int]:
    accepted = [o for o in outcomes if isinstance(o, int)]
    refused = [o for o in outcomes if isinstance(o, InsufficientCredits)]
    unexpected = [o for o in outcomes if not isinstance(o, int | InsufficientCredits)]
    assert not unexpected, unexpected
    return accepted, len(refused)


def test_30_concurrent_admissions_against_5_credits(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=5)

    async def body(r: aioredis.Redis) -> list[Any]:
        calls = [
            admit(r, keys, settings, record, request_id=new_request(), cost=1, queue_keys=[])
            for _ in range(30)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    accepted, refused = _count(with_redis(settings, body))
    assert sorted(accepted) == [0, 1, 2, 3, 4]  # each acceptance saw a distinct, non-negative balance
    assert refused == 25
    assert _balance(redis_client, keys, record.id) == 0


def test_30_admissions_from_threads_with_separate_clients(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=5)
    barrier = threading.Barrier(30)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def one() -> None:
        async def body(r: aioredis.Redis) -> int | None:
            await r.ping()  # connect first, so that the barrier lines up the admissions themselves
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
            return await admit(r, keys, settings, record, request_id=new_request(), cost=1, queue_keys=[])

        try:
            result: Any = with_redis(settings, body)
        except Exception as exc:
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    accepted, refused = _count(outcomes)
    assert sorted(accepted) == [0, 1, 2, 3, 4]
    assert refused == 25
    assert _balance(redis_client, keys, record.id) == 0


def test_admit_runs_the_requests_writes_in_the_same_step(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=1)
    request_id, marker = new_request(), f"{keys.prefix}:marker"
    writes = [
        ("HSET", keys.request(request_id), RequestField.STATUS, "QUEUED"),
        ("SET", marker, b"\x00\xff"),
        ("EXPIRE", marker, 60),  # bytes, str and int arguments, each encoded as redis-py would
    ]
    call = lambda r: admit(  # noqa: E731
        r, keys, settings, record, request_id=request_id, cost=1, queue_keys=[], commands=writes
    )
    assert with_redis(settings, call) == 0
    assert redis_client.hget(keys.request(request_id), RequestField.STATUS) == b"QUEUED"
    assert redis_client.get(marker) == b"\x00\xff"  # binary arguments arrive as sent
    assert 50 <= redis_client.ttl(marker) <= 60
    redis_client.delete(marker)
    request_id = new_request()
    with pytest.raises(InsufficientCredits):
        with_redis(settings, call)
    assert not redis_client.exists(marker) and not redis_client.exists(keys.request(request_id))


def test_admit_writes_nothing_when_its_idempotency_record_names_another_request(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    """The record's pending TTL ran out while this submission stalled and a later submission with
    the same Idempotency-Key took it: this one must not run a second request."""
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=5)
    request_id, idempotency_record = new_request(), f"{keys.prefix}:idem"
    redis_client.hset(idempotency_record, "request_id", "the-later-one")
    writes = [("HSET", keys.request(request_id), RequestField.STATUS, "QUEUED")]

    def call(r: aioredis.Redis) -> Awaitable[int | None]:
        return admit(
            r,
            keys,
            settings,
            record,
            request_id=request_id,
            cost=2,
            queue_keys=[],
            commands=writes,
            idempotency_record=idempotency_record,
        )

    with pytest.raises(Superseded):
        with_redis(settings, call)
    assert _balance(redis_client, keys, record.id) == 5
    assert not redis_client.exists(keys.request(request_id))
    redis_client.hset(idempotency_record, "request_id", request_id)
    assert with_redis(settings, call) == 3  # still its own: admitted


# --- queue full ----------------------------------------------------------------------------


def test_queue_full_is_a_429_with_retry_after(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    small = settings.model_copy(update={"max_queue": 3})
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=5)
    queue_keys = [keys.rq_queue_key("tiny"), keys.rq_queue_key("juggernaut")]
    redis_client.rpush(queue_keys[0], "j1", "j2")
    request_id = new_request()
    call = lambda r: admit(r, keys, small, record, request_id=request_id, cost=1, queue_keys=queue_keys)  # noqa: E731

    assert with_redis(small, call) == 4  # 2 queued < 3: accepted
    redis_client.rpush(queue_keys[1], "j3")
    request_id = new_request()
    with pytest.raises(QueueFull) as caught:
        with_redis(small, call)
    assert isinstance(caught.value, RateLimited) and caught.value.status_code == 429
    assert caught.value.message == "Queue is full, retry later"
    assert int(caught.value.headers["Retry-After"]) >= 1
    datetime.fromisoformat(caught.value.headers["x-rate-limit-reset-at-utc"])
    # Checked before credits: nothing taken, nothing recorded.
    assert _balance(redis_client, keys, record.id) == 4
    assert not redis_client.exists(keys.request(request_id))


# --- refund --------------------------------------------------------------------------------


def test_refund_gives_credits_back_exactly_once(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=5)
    request_id = new_request()

    async def body(r: aioredis.Redis) -> list[int | None]:
        await admit(r, keys, settings, record, request_id=request_id, cost=2, queue_keys=[])
        return [await refund(r, keys, request_id) for _ in range(3)]

    assert with_redis(settings, body) == [5, 5, 5]
    assert refund_sync(redis_client, keys, request_id) == 5  # the worker's path shares the guard
    assert _balance(redis_client, keys, record.id) == 5
    assert redis_client.hget(keys.request(request_id), RequestField.REFUNDED) == b"1"


def test_concurrent_refunds_count_once(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a", credits=3)
    request_id = new_request()

    async def body(r: aioredis.Redis) -> None:
        await admit(r, keys, settings, record, request_id=request_id, cost=3, queue_keys=[])
        await asyncio.gather(*(refund(r, keys, request_id) for _ in range(20)))

    with_redis(settings, body)
    clients = [redis.Redis.from_url(settings.redis_url) for _ in range(5)]
    threads = [threading.Thread(target=refund_sync, args=(client, keys, request_id)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert _balance(redis_client, keys, record.id) == 3


def test_refund_of_unlimited_or_unknown_is_a_no_op(
    redis_client: redis.Redis, keys: RedisKeys, settings: Settings
) -> None:
    _, record = api_keys.create_key(redis_client, keys, name="a")
    request_id = new_request()
    with_redis(
        settings, lambda r: admit(r, keys, settings, record, request_id=request_id, cost=2, queue_keys=[])
    )
    assert refund_sync(redis_client, keys, request_id) is None
    assert _balance(redis_client, keys, record.id) is None
    stored = redis_client.hgetall(keys.api_key(redis_client.hget(keys.api_key_index, record.id).decode()))
    assert stored and b"credits" not in stored

    unknown = new_request()
    assert with_redis(settings, lambda r: refund(r, keys, unknown)) is None
    assert not redis_client.exists(keys.request(unknown))  # an expired request is not recreated


def test_works_with_decoding_clients(redis_client: redis.Redis, keys: RedisKeys, settings: Settings) -> None:
    """The API or worker may build their clients with decode_responses=True: same results."""
    key, record = api_keys.create_key(redis_client, keys, name="a", credits=5, rpm=5, models=["tiny"])
    request_id = new_request()

    async def body() -> tuple[Any, int | None]:
        r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            got = await authenticate(r, keys, settings, key)
            return got, await admit(r, keys, settings, got, request_id=request_id, cost=2, queue_keys=[])
        finally:
            await r.aclose()

    got, remaining = asyncio.run(body())
    assert got == record and remaining == 3
    decoding = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        assert refund_sync(decoding, keys, request_id) == 5
    finally:
        decoding.close()
