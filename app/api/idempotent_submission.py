"""A submission with an `Idempotency-Key` (CONTRACT 10): the first goes on, its duplicates answer
its request (app/core/idempotency.py decides which is which, inside Redis)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
import redis

from app.api.app_state import AppState
from app.api.submission import Submitted
from app.core import idempotency
from app.core.api_keys import ApiKey
from app.core.errors import Conflict
from app.core.request_options import RequestOptions

# A duplicate of a first submission still under way (fetching its image, usually milliseconds)
# looks again this often: the first's request either appears or its key is freed.
PENDING_POLL_S = 0.02

SubmitNew = Callable[[RequestOptions], Awaitable[Submitted]]


async def submit_once(
    state: AppState,
    key: ApiKey,
    idempotency_key: str,
    digest: str,
    submit_new: SubmitNew,
    options: RequestOptions,
) -> Submitted:
    """`submit_new(options)` submits a new request with the id and record of `options`; it runs
    only for the first submission with this key and body."""
    give_up_at = time.monotonic() + idempotency.pending_ttl_s(state.settings) + 5
    while True:
        claimed = await idempotency.claim(
            state.aio,
            state.keys,
            state.settings,
            key_id=key.id,
            idempotency_key=idempotency_key,
            digest=digest,
            request_id=str(uuid.uuid4()),
        )
        if claimed.outcome == "NEW":
            mine = dataclasses.replace(
                options, request_id=claimed.request_id, idempotency_record=claimed.record
            )
            try:
                return await submit_new(mine)
            except Exception:
                # Refused (bad image, credits, queue full, Redis): a retry is a new attempt.
                with contextlib.suppress(redis.RedisError):
                    await idempotency.release(state.aio, state.keys, claimed)
                raise
        if claimed.outcome == "READY":
            record = await state.records.get(claimed.request_id, key)
            return Submitted(spec=record.spec, key=key, remaining_credits=key.credits, replayed=True)
        if time.monotonic() > give_up_at:
            raise Conflict("a request with this Idempotency-Key is still being submitted, retry later")
        await anyio.sleep(PENDING_POLL_S)
