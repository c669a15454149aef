"""Batching (SDXL_MAX_BATCH > 1): the queued requests that may join the one a worker has just started.

RQ hands a worker one job at a time; to run several in one pipeline call, the worker looks at the
head of the same RQ queue for QUEUED requests the engine can run together (`batch_key`) and takes
them in one Lua step (app/core/lua/claim.lua), which refuses any a cancel or another worker got first.
Taken requests are PROCESSING in this worker's name and in the processing zset, exactly as after
`start`, so the reaper treats each one individually if the worker dies. Their RQ job hashes stay
(the reaper needs one to queue a request again) and are deleted once each request has ended.
"""

from __future__ import annotations

import time

import redis

from app.core import lua_scripts
from app.core.job_spec import JobSpec, Status
from app.core.lifecycle import as_text
from app.core.redis_keys import RedisKeys, RequestField
from worker.engine import batch_key

# How far down the queue a worker looks for companions: bounded, so that one claim stays a short
# Lua step whatever the queue's length.
WINDOW = 32


def compatible_queued(
    client: redis.Redis,
    keys: RedisKeys,
    first: JobSpec,
    max_batch: int,
    *,
    max_images: int = 8,
    window_s: float = 0.0,
) -> list[str]:
    """Up to `max_batch - 1` QUEUED requests near the head of `first`'s queue that can run with it,
    with at most `max_images` images in all (SDXL_MAX_BATCH_IMAGES). When fewer are waiting, looks
    once more after `window_s` (SDXL_BATCH_WINDOW_MS): requests sent a moment apart share a call."""
    if max_batch <= 1 or first.samples >= max_images:
        return []
    wanted = _look(client, keys, first, max_batch, max_images)
    if window_s > 0 and len(wanted) < max_batch - 1:
        time.sleep(window_s)
        wanted = _look(client, keys, first, max_batch, max_images)
    return wanted


def _look(client: redis.Redis, keys: RedisKeys, first: JobSpec, max_batch: int, max_images: int) -> list[str]:
    window = [raw.decode() for raw in client.lrange(keys.rq_queue_key(first.base_model), 0, WINDOW - 1)]
    window = [request_id for request_id in window if request_id != first.request_id]
    if not window:
        return []
    with client.pipeline(transaction=False) as pipe:
        for request_id in window:
            pipe.hmget(keys.request(request_id), [RequestField.STATUS, RequestField.SPEC])
        records = pipe.execute()
    wanted_key = batch_key(first)
    wanted: list[str] = []
    images = first.samples
    for request_id, (status, spec_json) in zip(window, records, strict=True):
        if status != Status.QUEUED.value.encode() or spec_json is None:
            continue
        # A spec never changes once written, so compatibility read here still holds inside the
        # claim script; only the status can change, and the script checks it again.
        spec = JobSpec.from_json(spec_json)
        # One that would overflow the image budget is passed over (a smaller one further on may fit;
        # it runs in a later call, still in queue order among those of its size).
        if batch_key(spec) == wanted_key and images + spec.samples <= max_images:
            wanted.append(request_id)
            images += spec.samples
            if len(wanted) == max_batch - 1 or images == max_images:
                break
    return wanted


def claim(
    client: redis.Redis,
    keys: RedisKeys,
    worker_id: str,
    first: JobSpec,
    candidates: list[str],
    started_at: str,
) -> list[str]:
    """Makes those of `candidates` still QUEUED and in `first`'s queue PROCESSING in `worker_id`'s
    name, atomically; returns their ids. `started_at`: `first`'s start, which they share."""
    if not candidates:
        return []
    taken = lua_scripts.run(
        client,
        "claim",
        keys={
            "processing": keys.processing,
            "queue": keys.rq_queue_key(first.base_model),
            "queued": keys.queued,
            "requests": [keys.request(request_id) for request_id in candidates],
        },
        args={"worker": worker_id, "now": started_at, "events_prefix": keys.events(""), "ids": candidates},
    )
    return [as_text(raw) for raw in taken]


def rq_job_key(request_id: str) -> str:
    """RQ's hash for a job (rq job id == request id, see app/api/submission.py)."""
    return RedisKeys.rq_job(request_id)
