"""API keys: the key store (CONTRACT section 1).

A key lives in Redis as a hash under `RedisKeys.api_key(sha256(clear key))`; the clear key is never
written anywhere: it is shown once, by `create_key`, and from then on only its hash is known. Each
key also has a short random public id (`key_ab12cd34`) that the CLI, logs and request records use;
`RedisKeys.api_key_index` maps id -> hash, for listing and for revoking by id.

Fields of a key hash (absent credits/rpm/models/concurrency = unlimited / any base model):
    id, name, created_at, credits, rpm, models (JSON list), disabled ("0" or "1"), concurrency,
    used (credits spent, kept by the Lua steps that admit and refund)

Revoking marks the key disabled (kept, so `keys list` still shows it and its requests keep a
readable owner); a disabled key authenticates exactly like an unknown one: 401.

These functions take a sync `redis.Redis` (CLI, start-up); the hot path is in `app.admission`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.core import lua_scripts
from app.core.errors import InvalidInput, NotFound
from app.core.redis_keys import KeyField, RedisKeys

# Segmind's shape, `SG_` + 32 lowercase hex digits, so that tools checking a Segmind key's format
# accept ours. Keys made before (`sk-sdxl-` + 43 url-safe characters) keep working: a key is found
# by its hash, whatever its shape.
KEY_PREFIX = "SG_"
ID_PREFIX = "key_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    credits: int | None  # None: unlimited
    rpm: int | None  # None: unlimited
    models: tuple[str, ...] | None  # None: every base model
    disabled: bool
    created_at: float | None = None
    used: int = 0  # credits spent (refunded requests excluded)
    concurrency: int | None = None  # most requests PROCESSING at once; None: no limit
    unmoderated: bool = False  # content blocks (blocked terms, safety checker) skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "credits": self.credits,
            "rpm": self.rpm,
            "models": list(self.models) if self.models is not None else None,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "used": self.used,
            "concurrency": self.concurrency,
            "unmoderated": self.unmoderated,
        }


def hash_key(clear_key: str) -> str:
    # A plain sha256 is enough: generated keys carry 128 bits of randomness, so the hash cannot be
    # reversed, and a fast hash keeps authentication a single cheap lookup.
    return hashlib.sha256(clear_key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_hex(16)  # 128 random bits


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_from_fields(fields: Mapping[Any, Any]) -> ApiKey:
    """Build a ApiKey from a key hash as returned by HGETALL (bytes or str, either way)."""
    data = {_str(k): _str(v) for k, v in fields.items() if v is not None}
    models = json.loads(data[KeyField.MODELS]) if KeyField.MODELS in data else None
    return ApiKey(
        id=data[KeyField.ID],
        name=data.get(KeyField.NAME, ""),
        credits=int(data[KeyField.CREDITS]) if KeyField.CREDITS in data else None,
        rpm=int(data[KeyField.RPM]) if KeyField.RPM in data else None,
        models=tuple(models) if models is not None else None,
        disabled=data.get(KeyField.DISABLED, "0") == "1",
        created_at=float(data[KeyField.CREATED_AT]) if KeyField.CREATED_AT in data else None,
        used=int(data.get(KeyField.USED, 0)),
        concurrency=int(data[KeyField.CONCURRENCY]) if KeyField.CONCURRENCY in data else None,
        unmoderated=data.get(KeyField.UNMODERATED, "0") == "1",
    )


def _validate(
    name: str, credits: int | None, rpm: int | None, models: Sequence[str] | None, concurrency: int | None
) -> None:
    if not name or not name.strip():
        raise InvalidInput("name must not be empty")
    if credits is not None and credits < 0:
        raise InvalidInput(f"credits must be 0 or more, got {credits}")
    if rpm is not None and rpm < 1:
        raise InvalidInput(f"rpm must be 1 or more, got {rpm}")
    if models is not None and (not models or any(not m.strip() for m in models)):
        raise InvalidInput("models must be a non-empty list of base model names")
    if concurrency is not None and concurrency < 1:
        raise InvalidInput(f"concurrency must be 1 or more, got {concurrency}")


def _insert(
    r: redis.Redis,
    keys: RedisKeys,
    clear_key: str,
    *,
    name: str,
    credits: int | None,
    rpm: int | None,
    models: Sequence[str] | None,
    concurrency: int | None = None,
    unmoderated: bool = False,
) -> ApiKey | None:
    """Store a new key; None when that key already exists."""
    key_hash = hash_key(clear_key)
    while True:
        record = ApiKey(
            id=ID_PREFIX + secrets.token_hex(4),
            name=name.strip(),
            credits=credits,
            rpm=rpm,
            models=tuple(m.strip() for m in models) if models is not None else None,
            disabled=False,
            created_at=time.time(),  # full precision: keys made in one burst still list in order
            concurrency=concurrency,
            unmoderated=unmoderated,
        )
        fields: list[str] = [
            KeyField.ID,
            record.id,
            KeyField.NAME,
            record.name,
            KeyField.CREATED_AT,
            repr(record.created_at),
            KeyField.DISABLED,
            "0",
        ]
        if credits is not None:
            fields += [KeyField.CREDITS, str(credits)]
        if rpm is not None:
            fields += [KeyField.RPM, str(rpm)]
        if record.models is not None:
            fields += [KeyField.MODELS, json.dumps(list(record.models))]
        if unmoderated:
            fields += [KeyField.UNMODERATED, "1"]
        if concurrency is not None:
            fields += [KeyField.CONCURRENCY, str(concurrency)]
        outcome = int(
            # The hash and its index entry together, or nothing (app/core/lua/create_key.lua): an
            # existing key is never overwritten, and an id clash draws a new id.
            lua_scripts.run(
                r,
                "create_key",
                keys={"key": keys.api_key(key_hash), "index": keys.api_key_index},
                args={"id": record.id, "hash": key_hash, "fields": fields},
            )
        )
        if outcome == 1:
            return record
        if outcome == 0:
            return None
        # outcome -1: 32-bit id clash with another key, draw again


def create_key(
    r: redis.Redis,
    keys: RedisKeys,
    *,
    name: str,
    credits: int | None = None,
    rpm: int | None = None,
    models: Sequence[str] | None = None,
    key: str | None = None,
    concurrency: int | None = None,
    unmoderated: bool = False,
) -> tuple[str, ApiKey]:
    """Create a key and return (clear key, record). The clear key is not stored: show it now."""
    _validate(name, credits, rpm, models, concurrency)
    clear_key = key if key is not None else generate_key()
    if not clear_key.strip():
        raise InvalidInput("key must not be empty")
    record = _insert(
        r,
        keys,
        clear_key,
        name=name,
        credits=credits,
        rpm=rpm,
        models=models,
        concurrency=concurrency,
        unmoderated=unmoderated,
    )
    if record is None:
        raise InvalidInput("this key already exists")
    return clear_key, record


def ensure_static_keys(r: redis.Redis, keys: RedisKeys, clear_keys: Sequence[str]) -> None:
    """Create the keys of SDXL_API_KEYS (unlimited) if absent. Idempotent: an existing key is
    left exactly as it is (balance, limits, and a revocation made with `keys revoke` all stay)."""
    for clear_key in clear_keys:
        if clear_key.strip():
            _insert(r, keys, clear_key.strip(), name="SDXL_API_KEYS", credits=None, rpm=None, models=None)


def _resolve(r: redis.Redis, keys: RedisKeys, key_or_id: str) -> str:
    """The Redis key of a key given by public id or by clear key; NotFound otherwise."""
    if key_or_id.startswith(ID_PREFIX):
        key_hash = r.hget(keys.api_key_index, key_or_id)
        if key_hash is not None:
            return keys.api_key(_str(key_hash))
    redis_key = keys.api_key(hash_key(key_or_id))
    if r.exists(redis_key):
        return redis_key
    raise NotFound(f"No API key matches {_masked(key_or_id)}")


def _masked(key_or_id: str) -> str:
    # Never echo a whole secret into logs or terminals scrollback: ids are shown, keys are cut.
    if key_or_id.startswith(ID_PREFIX) and len(key_or_id) <= 16:
        return repr(key_or_id)
    return repr(key_or_id[:10] + "...") if len(key_or_id) > 10 else "the given key"


def get_key(r: redis.Redis, keys: RedisKeys, key_or_id: str) -> ApiKey:
    return record_from_fields(r.hgetall(_resolve(r, keys, key_or_id)))


def list_keys(r: redis.Redis, keys: RedisKeys) -> list[ApiKey]:
    """Every key, oldest first."""
    hashes = [_str(h) for h in r.hvals(keys.api_key_index)]
    pipe = r.pipeline(transaction=False)
    for key_hash in hashes:
        pipe.hgetall(keys.api_key(key_hash))
    records = [record_from_fields(fields) for fields in pipe.execute() if fields]
    return sorted(records, key=lambda rec: (rec.created_at or 0.0, rec.id))


def revoke_key(r: redis.Redis, keys: RedisKeys, key_or_id: str) -> ApiKey:
    """Mark the key disabled: from now on it answers 401 like an unknown key."""
    redis_key = _resolve(r, keys, key_or_id)
    r.hset(redis_key, KeyField.DISABLED, "1")
    return record_from_fields(r.hgetall(redis_key))


def add_credits(r: redis.Redis, keys: RedisKeys, key_or_id: str, amount: int) -> ApiKey:
    """Add `amount` (> 0) to the key's balance; an unlimited key has no balance to add to."""
    if amount <= 0:
        raise InvalidInput(f"amount must be 1 or more, got {amount}")
    redis_key = _resolve(r, keys, key_or_id)
    outcome = lua_scripts.run(r, "add_credits", keys={"key": redis_key}, args={"amount": amount})
    if int(outcome[0]) == -1:
        raise NotFound(f"No API key matches {_masked(key_or_id)}")
    if int(outcome[0]) == -2:
        raise InvalidInput("this key has unlimited credits; there is no balance to add to")
    return record_from_fields(r.hgetall(redis_key))
