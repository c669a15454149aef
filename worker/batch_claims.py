"""The batch side of a job: the compatible queued requests a starting request takes with it (with
SDXL_MAX_BATCH > 1), and the RQ jobs of those, which RQ itself never ran, cleaned up after."""

from __future__ import annotations

import contextlib
import logging

import redis

from app.core.job_spec import JobSpec, Status
from app.core.key_concurrency import without_limited_keys
from app.core.redis_keys import RequestField
from worker.job_context import WorkerContext

log = logging.getLogger("sdxl.worker")


def claim_companions(ctx: WorkerContext, spec: JobSpec) -> list[str]:
    """With SDXL_MAX_BATCH > 1, the queued requests taken to run with `spec` (see worker/batching.py)."""
    if ctx.max_batch <= 1:
        return []
    from worker.batching import claim, compatible_queued

    queued = compatible_queued(
        ctx.redis, ctx.keys, spec, ctx.max_batch, max_images=ctx.max_batch_images, window_s=ctx.batch_window_s
    )
    # Requests of keys with a concurrency limit each take their own slot as they start: not batched.
    candidates = without_limited_keys(ctx.redis, ctx.keys, queued)
    if not candidates:
        return []
    started_at = ctx.redis.hget(ctx.keys.request(spec.request_id), RequestField.STARTED_AT)
    try:
        companions = claim(ctx.redis, ctx.keys, ctx.worker_id, spec, candidates, started_at.decode())
    except redis.RedisError:
        # The claim may have happened with its reply lost: hand back any it took (the hand back
        # leaves alone those it did not take).
        ctx.orphans.update(candidates)
        raise
    if companions:
        log.info("batch claimed", extra={"batch_size": 1 + len(companions), "companions": companions})
    return companions


def forget_rq_jobs(ctx: WorkerContext, request_ids: list[str]) -> None:
    """RQ never ran the claimed requests' jobs, so it will not delete their hashes (result_ttl=0).

    Only those of ended requests: one presumed lost meanwhile was queued again and runs on its job."""
    from worker.batching import rq_job_key

    if not request_ids:
        return
    with contextlib.suppress(redis.RedisError):
        with ctx.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.hget(ctx.keys.request(request_id), RequestField.STATUS)
            statuses = pipe.execute()
        ended = [
            rq_job_key(request_id)
            for request_id, status in zip(request_ids, statuses, strict=True)
            if status is not None and Status(status.decode()).is_terminal()
        ]
        if ended:
            ctx.redis.delete(*ended)
