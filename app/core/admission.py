"""Admission on the hot path: authenticate + rate limit; queue-full check + credits + the request's
writes (`admit`); refund.

Each step is one Lua script, so one Redis round trip, and is atomic: no interleaving of concurrent
requests (in one API process or many) can overdraw a balance, exceed a rate, or refund twice.

Choices (CONTRACT sections 1 and 6):
- Rate limit: a sliding log per key (sorted set `RedisKeys.rate(key_id)` of submission times, Redis
  server clock), so that at most `rpm` submissions fall in any 60-second window. Every
  authenticated submission is logged before validation, so requests later refused (400, 403, 406,
  queue full) count too; a submission refused by the rate limit itself is not logged, otherwise a
  client retrying at `Retry-After` would push its own reset further out for ever.
- Credits: taken after the queue-full check, in the script that writes the request (submit.lua),
  so that none are ever taken for a request that was not written. The request hash records key_id
  and cost so that the step that ends the request FAILED (app/core/lua/_end_request.lua) gives them
  back exactly once (HSETNX `RequestField.REFUNDED`).
- The scripts are files in app/core/lua/, called through app/core/lua_scripts.py.
- RedisKeys derived inside the scripts (a key's hash from the id index, its rate log from its id) are
  built from prefixes passed as arguments: fine on a single Redis (the deployment target, as for
  RQ itself), not on Redis Cluster.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from app.core import eta, lua_scripts
from app.core.api_keys import ApiKey, hash_key, record_from_fields
from app.core.errors import Conflict, Forbidden, InsufficientCredits, MissingKey, RateLimited, Unauthorized
from app.core.redis_keys import RedisKeys
from app.core.settings import Settings

RATE_WINDOW_S = 60.0


class Superseded(Exception):
    """The submission's Idempotency-Key record names another request now: its pending TTL ran out
    while this submission stalled, and a later one with the same key took it."""


# A full queue's Retry-After is the ETA of its next start (app/core/eta.py); this when there is none
# (no live worker serves a queued model).
QUEUE_FULL_RETRY_AFTER_S = 5

ANONYMOUS = ApiKey(id="anonymous", name="anonymous", credits=None, rpm=None, models=None, disabled=False)


class QueueFull(RateLimited):
    default_message = "Queue is full, retry later"


def _int(value: Any) -> int:
    return int(value.decode() if isinstance(value, bytes) else value)


def parse_api_key(headers: Mapping[str, str]) -> str | None:
    """The key from `x-api-key`, else from `Authorization: Bearer KEY`; None when neither."""
    lowered = {k.lower(): v for k, v in headers.items()} if isinstance(headers, dict) else headers
    key = (lowered.get("x-api-key") or "").strip()
    if key:
        return key
    scheme, _, value = (lowered.get("authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _retry_headers(retry_after_s: float, reset_at_s: float) -> dict[str, str]:
    reset_at = datetime.fromtimestamp(reset_at_s, UTC).isoformat(timespec="seconds")
    return {"Retry-After": str(max(1, math.ceil(retry_after_s))), "x-rate-limit-reset-at-utc": reset_at}


async def authenticate(
    r: Any,
    keys: RedisKeys,
    settings: Settings,
    api_key: str | None,
    *,
    count_rate: bool = True,
    rate_window_s: float = RATE_WINDOW_S,
) -> ApiKey:
    """The key's record, counting this submission against its rate (one round trip).

    `count_rate=False` for read routes (status, result, DELETE): they authenticate but must not use
    up the submission rate. `rate_window_s` exists for tests; the contract's window is 60 s.
    """
    if settings.auth == "disabled":
        return ANONYMOUS
    if not api_key or not api_key.strip():
        raise MissingKey()
    reply = await lua_scripts.run(
        r,
        "authenticate",
        keys={"key": keys.api_key(hash_key(api_key.strip()))},
        args={
            "rate_prefix": keys.rate(""),
            "count": "1" if count_rate else "0",
            "window_ms": int(rate_window_s * 1000),
            "member": secrets.token_hex(8),
        },
    )
    return _authenticated(reply)


def _authenticated(reply: list[Any]) -> ApiKey:
    outcome = _int(reply[0])
    if outcome == 3:
        flat = reply[1:]
        return record_from_fields(dict(zip(flat[::2], flat[1::2], strict=True)))
    if outcome == 2:
        reset_ms, now_ms = _int(reply[1]), _int(reply[2])
        raise RateLimited(
            "Rate limit exceeded for this API key, retry later",
            headers=_retry_headers((reset_ms - now_ms) / 1000, reset_ms / 1000),
        )
    raise Unauthorized()  # unknown (0) or disabled (1): the same answer, on purpose


def check_model_allowed(record: ApiKey, base_model: str) -> None:
    if record.models is not None and base_model not in record.models:
        allowed = ", ".join(record.models)
        raise Forbidden(f"This API key may not use base_model '{base_model}' (allowed: {allowed})")


async def admit(
    r: Any,
    keys: RedisKeys,
    settings: Settings,
    record: ApiKey,
    *,
    request_id: str,
    cost: int,
    queue_keys: list[str],
    pending_ttl_s: int | None = None,
    commands: Sequence[Sequence[Any]] = (),
    idempotency_record: str | None = None,
) -> int | None:
    """Check the queue is not full, take `cost` from the key's balance and run the request's
    `commands` (its writes, app/api/submission.py), in one atomic script (submit.lua).

    Records key_id and cost in the request hash for the refund, with `pending_ttl_s` as its TTL
    when given. `idempotency_record`: the Idempotency-Key record that must still name this request
    (else `Superseded`, nothing taken or written). Returns the remaining balance, None for an
    unlimited key.
    """
    layout, blob = lua_scripts.pack_commands(commands, r.get_encoder())
    reply = await lua_scripts.run(
        r,
        "submit",
        keys={"request": keys.request(request_id), "key_index": keys.api_key_index, "queues": queue_keys},
        args={
            "request_id": request_id,
            "key_id": record.id,
            "cost": cost,
            "max_queue": settings.max_queue,
            "key_prefix": keys.api_key(""),
            "ttl": pending_ttl_s or 0,
            "now": time.time(),
            "idempotency_record": idempotency_record or "",
            "layout": layout,
            "blob": blob,
        },
    )
    if _int(reply[0]) == 0:
        models = [queue_key.removeprefix(keys.rq_queue_key("")) for queue_key in queue_keys]
        wait_s = await eta.queue_slot_wait_s(r, keys, models)
        raise _queue_full(QUEUE_FULL_RETRY_AFTER_S if wait_s is None else wait_s)
    return _admitted(reply, cost)


def _queue_full(retry_after_s: float) -> QueueFull:
    now = datetime.now(UTC).timestamp()
    return QueueFull(headers=_retry_headers(retry_after_s, now + retry_after_s))


def _admitted(reply: list[Any], cost: int) -> int | None:
    outcome = _int(reply[0])
    if outcome == 3:
        return _int(reply[1]) if reply[1] is not None else None
    if outcome == 2:
        available = _int(reply[1])
        raise InsufficientCredits(
            f"Not enough credits: this request needs {cost}, the API key has {available}"
        )
    if outcome == 0:
        raise _queue_full(QUEUE_FULL_RETRY_AFTER_S)
    if outcome == 1:
        raise Unauthorized()  # revoked between authenticate and admit
    if outcome == 5:
        raise Superseded()
    raise Conflict("this request was already submitted")


async def refund(r: Any, keys: RedisKeys, request_id: str) -> int | None:
    """Give the request's cost back to its key, once; returns the key's balance (None: unlimited).

    Requests that end are refunded in the step that ends them (app/core/lua/_end_request.lua); this
    is the same guarded refund on its own."""
    return _refunded(await lua_scripts.run(r, "refund", **_refund_call(keys, request_id)))


def refund_sync(r: Any, keys: RedisKeys, request_id: str) -> int | None:
    """`refund` for a sync client."""
    return _refunded(lua_scripts.run(r, "refund", **_refund_call(keys, request_id)))


def _refund_call(keys: RedisKeys, request_id: str) -> dict[str, dict[str, str]]:
    return {
        "keys": {"request": keys.request(request_id), "key_index": keys.api_key_index},
        "args": {"key_prefix": keys.api_key("")},
    }


def _refunded(reply: list[Any]) -> int | None:
    return _int(reply[1]) if _int(reply[0]) == 1 else None
