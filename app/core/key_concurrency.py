"""Per-key concurrency (CONTRACT 10), the Python side: the limit itself is kept inside Redis by the
start and end steps (app/core/lua/_concurrency.lua). Here: which requests belong to limited keys
(batching leaves them out: each must take its own slot at its own start)."""

from __future__ import annotations

from typing import Any

from app.core.lifecycle import as_text
from app.core.redis_keys import KeyField, RedisKeys, RequestField


def without_limited_keys(client: Any, keys: RedisKeys, request_ids: list[str]) -> list[str]:
    """`request_ids` less those whose API key has a concurrency limit (sync client, two round trips).
    A key's limit is set when it is created and never changes, so the answer cannot go stale."""
    if not request_ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for request_id in request_ids:
            pipe.hget(keys.request(request_id), RequestField.KEY_ID)
        key_ids = [as_text(k) for k in pipe.execute()]
    distinct = sorted({k for k in key_ids if k})
    with client.pipeline(transaction=False) as pipe:
        for key_id in distinct:
            pipe.hget(keys.api_key_index, key_id)
        hashes = dict(zip(distinct, pipe.execute(), strict=True))
    with client.pipeline(transaction=False) as pipe:
        for key_id in distinct:
            pipe.hexists(keys.api_key(as_text(hashes[key_id] or b"")), KeyField.CONCURRENCY)
        limited = {k for k, has in zip(distinct, pipe.execute(), strict=True) if has and hashes[k]}
    return [rid for rid, key_id in zip(request_ids, key_ids, strict=True) if key_id not in limited]
