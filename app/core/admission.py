"""Admission on the hot path: authenticate + rate limit, reserve credits + queue-full check, refund.

Each step is one Lua script, so one Redis round trip, and is atomic: no interleaving of concurrent
requests (in one API process or many) can overdraw a balance, exceed a rate, or refund twice.

Choices (CONTRACT sections 1 and 6):
- Rate limit: a sliding log per key (sorted set `RedisKeys.rate(key_id)` of submission times, Redis
  server clock), so that at most `rpm` submissions fall in any 60-second window. Every
  authenticated submission is logged before validation, so requests later refused (400, 403, 406,
  queue full) count too; a submission refused by the rate limit itself is not logged, otherwise a
  client retrying at `Retry-After` would push its own reset further out for ever.
- Credits: reserved after the queue-full check in one script, and the request hash records
  key_id and cost so that `refund` (cancel of a QUEUED job, or a FAILED job in the worker) can give
  them back exactly once (HSETNX `RequestField.REFUNDED`).
- RedisKeys derived inside the scripts (a key's hash from the id index, its rate log from its id) are
  built from prefixes passed as arguments: fine on a single Redis (the deployment target, as for
  RQ itself), not on Redis Cluster.
"""

from __future__ import annotations

import math
import secrets
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from string import Template
from typing import Any

from app.core.api_keys import ApiKey, KeyField, hash_key, record_from_fields
from app.core.errors import Conflict, Forbidden, InsufficientCredits, MissingKey, RateLimited, Unauthorized
from app.core.redis_keys import RedisKeys, RequestField
from app.core.settings import Settings

RATE_WINDOW_S = 60.0
# A full queue drains at the speed of the GPUs, which the API does not know: a short, fixed hint.
QUEUE_FULL_RETRY_AFTER_S = 5

ANONYMOUS = ApiKey(id="anonymous", name="anonymous", credits=None, rpm=None, models=None, disabled=False)


class QueueFull(RateLimited):
    default_message = "Queue is full, retry later"


def _lua(text: str) -> str:
    """Field names in the scripts come from KeyField / RequestField, so there is one source of truth."""
    return Template(text).substitute(
        ID=KeyField.ID,
        CREDITS=KeyField.CREDITS,
        RPM=KeyField.RPM,
        DISABLED=KeyField.DISABLED,
        KEY_ID=RequestField.KEY_ID,
        COST=RequestField.COST,
        REFUNDED=RequestField.REFUNDED,
    )


# KEYS[1] key hash; ARGV: rate-key prefix, count ("1"/"0"), window ms, unique log member.
# Returns {0} unknown, {1} disabled, {2, reset_ms, now_ms} rate limited, {3, <HGETALL...>} ok.
_AUTHENTICATE = _lua("""
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return {0} end
local f = {}
for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
if f['$DISABLED'] == '1' then return {1} end
if ARGV[2] == '1' and f['$RPM'] then
  local rpm = tonumber(f['$RPM'])
  local window = tonumber(ARGV[3])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local log = ARGV[1] .. f['$ID']
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  local n = redis.call('ZCARD', log)
  if n >= rpm then
    -- a slot frees when the (n - rpm + 1)-th oldest entry leaves the window
    local reset = now + window
    if n > 0 then
      local e = redis.call('ZRANGE', log, n - rpm, n - rpm, 'WITHSCORES')
      reset = tonumber(e[2]) + window
    end
    return {2, reset, now}
  end
  redis.call('ZADD', log, now, ARGV[4])
  redis.call('PEXPIRE', log, window)
end
local out = {3}
for i = 1, #h do out[#out + 1] = h[i] end
return out
""")

# KEYS[1] request hash, KEYS[2] id index, KEYS[3..] queue lists;
# ARGV: key id, cost, max queue, key-hash prefix, TTL of the request hash (0: none).
# Returns {0, queued} queue full, {1} disabled, {2, balance} short, {3, balance|nil} ok, {4} twice.
_RESERVE = _lua("""
local queued = 0
for i = 3, #KEYS do queued = queued + redis.call('LLEN', KEYS[i]) end
if queued >= tonumber(ARGV[3]) then return {0, queued} end
if redis.call('HEXISTS', KEYS[1], '$KEY_ID') == 1 then return {4} end
local cost = tonumber(ARGV[2])
local balance = false
local h = redis.call('HGET', KEYS[2], ARGV[1])
if h then
  local k = ARGV[4] .. h
  if redis.call('HGET', k, '$DISABLED') == '1' then return {1} end
  local c = redis.call('HGET', k, '$CREDITS')
  if c then
    c = tonumber(c)
    if c < cost then return {2, c} end
    balance = redis.call('HINCRBY', k, '$CREDITS', -cost)
  end
end
redis.call('HSET', KEYS[1], '$KEY_ID', ARGV[1], '$COST', cost)
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
return {3, balance}
""")

# KEYS[1] request hash, KEYS[2] id index; ARGV: key-hash prefix.
# Returns {0} no balance to refund to, {1, balance} (refunded now or earlier).
_REFUND = _lua("""
local kid = redis.call('HGET', KEYS[1], '$KEY_ID')
if not kid then return {0} end
local cost = tonumber(redis.call('HGET', KEYS[1], '$COST') or '0')
local first = redis.call('HSETNX', KEYS[1], '$REFUNDED', '1')
local h = redis.call('HGET', KEYS[2], kid)
if not h then return {0} end
local k = ARGV[1] .. h
local c = redis.call('HGET', k, '$CREDITS')
if not c then return {0} end
if first == 1 and cost > 0 then c = redis.call('HINCRBY', k, '$CREDITS', cost) end
return {1, c}
""")

# One registered Script per client and text: redis-py keeps its SHA and reloads it after a
# SCRIPT FLUSH or a Redis restart (NoScriptError), so each call is a single EVALSHA.
_scripts: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _script(r: Any, text: str) -> Any:
    per_client = _scripts.setdefault(r, {})
    script = per_client.get(text)
    if script is None:
        script = per_client[text] = r.register_script(text)
    return script


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
    reply = await _script(r, _AUTHENTICATE)(
        keys=[keys.api_key(hash_key(api_key.strip()))],
        args=[keys.rate(""), "1" if count_rate else "0", int(rate_window_s * 1000), secrets.token_hex(8)],
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


async def reserve(
    r: Any,
    keys: RedisKeys,
    settings: Settings,
    record: ApiKey,
    *,
    request_id: str,
    cost: int,
    queue_keys: list[str],
    pending_ttl_s: int | None = None,
) -> int | None:
    """Check the queue is not full, then take `cost` from the key's balance, in one atomic script.

    Records key_id and cost in the request hash for `refund`, with `pending_ttl_s` as its TTL when
    given (so that a process dying before the enqueue leaves nothing behind for ever). Returns the
    remaining balance, None for an unlimited key.
    """
    reply = await _script(r, _RESERVE)(
        keys=[keys.request(request_id), keys.api_key_index, *queue_keys],
        args=[record.id, cost, settings.max_queue, keys.api_key(""), pending_ttl_s or 0],
    )
    return _reserved(reply, cost)


def _reserved(reply: list[Any], cost: int) -> int | None:
    outcome = _int(reply[0])
    if outcome == 3:
        return _int(reply[1]) if reply[1] is not None else None
    if outcome == 2:
        available = _int(reply[1])
        raise InsufficientCredits(
            f"Not enough credits: this request needs {cost}, the API key has {available}"
        )
    if outcome == 0:
        now = datetime.now(UTC).timestamp()
        raise QueueFull(headers=_retry_headers(QUEUE_FULL_RETRY_AFTER_S, now + QUEUE_FULL_RETRY_AFTER_S))
    if outcome == 1:
        raise Unauthorized()  # revoked between authenticate and reserve
    raise Conflict("credits were already reserved for this request")


async def refund(r: Any, keys: RedisKeys, request_id: str) -> int | None:
    """Give the request's cost back to its key, once; returns the key's balance (None: unlimited)."""
    return _refunded(await _script(r, _REFUND)(**_refund_call(keys, request_id)))


def refund_sync(r: Any, keys: RedisKeys, request_id: str) -> int | None:
    """`refund` for the worker's sync client (a FAILED job)."""
    return _refunded(_script(r, _REFUND)(**_refund_call(keys, request_id)))


def _refund_call(keys: RedisKeys, request_id: str) -> dict[str, list[Any]]:
    return {"keys": [keys.request(request_id), keys.api_key_index], "args": [keys.api_key("")]}


def _refunded(reply: list[Any]) -> int | None:
    return _int(reply[1]) if _int(reply[0]) == 1 else None
