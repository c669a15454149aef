"""The end of the chaos run (tests/chaos_run.py), read from Redis itself: what the server holds for
the key, whether every request ended, the balance against the COMPLETED requests, and the TTL of
every per-request key. Only what the server holds counts: a v1 client whose API died never learnt
its request's id, yet the request was charged and must end like any other."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field

import redis

from app.core import api_keys
from app.core.redis_keys import RedisKeys, RequestField

ENDED = ("COMPLETED", "FAILED")
# Request ids are uuid4s: any key that carries one is a per-request key (worker ids are not uuids).
REQUEST_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in fields.items()}


def server_requests(client: redis.Redis, keys: RedisKeys, key_id: str) -> dict[str, dict[str, str]]:
    """Every request hash of the key, {id: fields}."""
    found = {}
    for name in client.scan_iter(match=keys.request("*"), count=1000):
        fields = _text(client.hgetall(name))
        if fields.get(RequestField.KEY_ID) == key_id:
            found[name.decode().rsplit(":", 1)[1]] = fields
    return found


def unsettled(client: redis.Redis, keys: RedisKeys, key_id: str) -> list[str]:
    """Ids of the key's requests not yet ended."""
    return [i for i, f in server_requests(client, keys, key_id).items() if f.get("status") not in ENDED]


def wait_settled(client: redis.Redis, keys: RedisKeys, key_id: str, timeout: float) -> float | None:
    """Seconds until nothing of the key is left unended (None: not within `timeout`)."""
    started = time.monotonic()
    while unsettled(client, keys, key_id):
        if time.monotonic() - started >= timeout:
            return None
        time.sleep(0.25)
    return time.monotonic() - started


def keys_without_ttl(client: redis.Redis) -> list[str]:
    """Per-request keys (any key naming a request id: hash, input, outputs, events, done list, RQ's
    job and results) that would live for ever."""
    return [
        name.decode()
        for name in client.scan_iter(count=1000)
        if REQUEST_ID.search(name) and client.ttl(name) == -1
    ]


@dataclass
class Audit:
    statuses: Counter = field(default_factory=Counter)  # status -> requests the server holds
    errors: Counter = field(default_factory=Counter)  # a FAILED request's error -> count
    not_ended: list[str] = field(default_factory=list)  # "id status" of requests left unended
    completed_cost: int = 0
    balance_drift: int = 0  # balance - (initial - cost of COMPLETED): 0 when exact
    used_drift: int = 0  # the key's "used" - cost of COMPLETED
    failed_unrefunded: list[str] = field(default_factory=list)
    keys_without_ttl: list[str] = field(default_factory=list)
    acknowledged_missing: list[str] = field(default_factory=list)  # ids a client was given, gone
    v1_ok_not_completed: list[str] = field(default_factory=list)  # v1 answered 200, not COMPLETED
    latest_end_after: float = 0.0  # seconds from `since` to the last finished_at
    longest_s: float = 0.0  # the longest submission-to-end of an ended request


def audit(
    client: redis.Redis,
    keys: RedisKeys,
    api_key: str,
    initial_credits: int,
    acknowledged: set[str],
    completed_v1: set[str],
    since: float,
) -> Audit:
    """`since` is the wall-clock time (time.time()) from which ends are measured."""
    record = api_keys.get_key(client, keys, api_key)
    held = server_requests(client, keys, record.id)
    result = Audit()
    for request_id, fields in held.items():
        status = fields.get("status", "RESERVED")
        result.statuses[status] += 1
        if status not in ENDED:
            result.not_ended.append(f"{request_id} {status}")
            continue
        if status == "COMPLETED":
            result.completed_cost += int(fields.get(RequestField.COST) or 0)
        else:
            result.errors[fields.get(RequestField.ERROR, "?")] += 1
            if int(fields.get(RequestField.COST) or 0) > 0 and fields.get(RequestField.REFUNDED) != "1":
                result.failed_unrefunded.append(request_id)
        finished = float(fields.get(RequestField.FINISHED_AT) or 0)
        result.latest_end_after = max(result.latest_end_after, finished - since)
        created = float(fields.get(RequestField.CREATED_AT) or finished)
        result.longest_s = max(result.longest_s, finished - created)
    result.balance_drift = (record.credits or 0) - (initial_credits - result.completed_cost)
    result.used_drift = record.used - result.completed_cost
    result.keys_without_ttl = keys_without_ttl(client)
    result.acknowledged_missing = sorted(acknowledged - held.keys())
    result.v1_ok_not_completed = sorted(
        i for i in completed_v1 if held.get(i, {}).get("status") != "COMPLETED"
    )
    return result
