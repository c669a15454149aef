"""The RQ job function (enqueued by dotted path, JSON payload: the request id only).

RQ's SimpleWorker runs it in the worker's own process, where `WorkerContext` holds the resident
engine; the job reads its spec and input image from Redis, runs the engine, and ends the request
through the Lua state machine (app/lifecycle.py). Failures are data: the request ends FAILED with
the reason and its credits back; only the process's own death is left to the reaper.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import redis
from rq import get_current_job

from app.core import eta, job_metrics
from app.core.content_blocks import BLOCKED_STATUS, OUTPUT_FLAGGED, PROMPT_BLOCKED
from app.core.errors import ServiceError
from app.core.image_handoff import decode_handoff
from app.core.job_spec import CANCELLED, DEADLINE_EXCEEDED, JobSpec, Status
from app.core.lifecycle import as_text, completed_fields, failed_fields
from app.core.logging_setup import bind_request_id, request_id_var
from app.core.redis_keys import RequestField
from worker import gpu_faults
from worker.batch_claims import claim_companions, forget_rq_jobs
from worker.job_context import WorkerContext, installed_context
from worker.job_watch import JobWatch

log = logging.getLogger("sdxl.worker")


def run_request(request_id: str) -> str:
    context = installed_context()
    if context is None:
        raise RuntimeError("worker.tasks.run_request called outside a worker service")
    token = request_id_var.set(request_id)
    try:
        return _run(context, request_id)
    finally:
        request_id_var.reset(token)


def _run(ctx: WorkerContext, request_id: str) -> str:
    try:
        # (A start whose reply was lost may still have made the request ours: hand it back too.)
        outcome = ctx.lifecycle.start(ctx.redis, request_id, ctx.worker_id)
    except redis.RedisError:
        ctx.orphans.add(request_id)
        raise
    outcome = as_text(outcome)
    if outcome == "DEADLINE":
        return _end_past_deadline(ctx, request_id)
    if outcome == "PARKED":
        return _parked(ctx)
    if outcome != "OK":
        log.info("skipping request", extra={"reason": f"status is {outcome}"})
        return "skipped"
    ctx.current["request_id"] = request_id
    held = [request_id]
    try:
        [(spec, image_bytes)] = _load(ctx, [request_id])
        companions = claim_companions(ctx, spec)
        held += companions
        jobs = [(spec, image_bytes), *_load(ctx, companions)]
        outcomes: dict[str, str] = {}
        ready: list[tuple[JobSpec, bytes]] = []
        for job_spec, data in jobs:
            if data is None:
                outcomes[job_spec.request_id] = _fail(
                    ctx, job_spec, "input image expired before the request started", 500
                )
            elif ctx.moderation is not None and ctx.moderation.prompt_blocked(job_spec):
                # Never run: FAILED with the reason, refunded (CONTRACT 3c).
                outcomes[job_spec.request_id] = _fail(ctx, job_spec, PROMPT_BLOCKED, BLOCKED_STATUS)
            else:
                ready.append((job_spec, data))
        if ready:
            outcomes.update(_generate(ctx, ready))
        forget_rq_jobs(ctx, companions)
        return outcomes[request_id]
    except redis.RedisError:
        # The requests may still be PROCESSING in this worker's name, and the reaper leaves them
        # alone while our heartbeat lives: hand them back once Redis answers, or they would stay stuck.
        ctx.orphans.update(held)
        raise
    except Exception as exc:
        if gpu_faults.is_fatal_device_error(exc):
            # The CUDA context is poisoned: the requests go back to their queues, the process exits.
            gpu_faults.exit_for_device_error(ctx, held, exc)
        # Anything else (a corrupt stored input, a spec this version cannot read, a bug before the
        # engine runs) would leave the requests PROCESSING for ever under this worker's live
        # heartbeat, their credits held: each ends FAILED with the reason, refunded, in finish's step.
        log.exception("request failed outside the engine")
        reason = f"internal error: {type(exc).__name__}: {exc}"
        for held_id in held:
            _fail_held(ctx, held_id, reason[:500])
        return "failed"
    finally:
        ctx.current.pop("request_id", None)


def _fail_held(ctx: WorkerContext, request_id: str, error: str) -> None:
    """FAILED and refunded by id alone: its spec may be what could not be read. One that has already
    ended (or that this worker no longer holds) is left as it is by finish."""
    try:
        ctx.lifecycle.finish(ctx.redis, request_id, ctx.worker_id, failed_fields(error, 500))
    except redis.RedisError:
        ctx.orphans.add(request_id)  # handed back once Redis answers, as for any Redis failure


def _parked(ctx: WorkerContext) -> str:
    """Its key is at its concurrency limit: the request waits, parked in order, and an end of one of
    the key's requests puts it back at the front of its queue, on this same RQ job. RQ deletes the
    hash of a job that returns (result_ttl 0): this one's is kept for as long as its request waits."""
    job = get_current_job()
    if job is not None:
        job.result_ttl = int(ctx.lifecycle.max_queue_time_s + ctx.lifecycle.result_ttl_s)
    log.info("request parked: its key is at its concurrency limit")
    return "parked"


def _end_past_deadline(ctx: WorkerContext, request_id: str) -> str:
    """A request popped past its Cancel-After deadline never runs: it ends FAILED "deadline
    exceeded", refunded (deadline.lua). Should this process die first, the deadline sweep ends it."""
    spec = JobSpec.from_json(ctx.redis.hget(ctx.keys.request(request_id), RequestField.SPEC))
    outcome = as_text(ctx.lifecycle.deadline(ctx.redis, request_id, ctx.keys.queue_name(spec.base_model)))
    if outcome == "EXCEEDED":
        _record(ctx, spec, Status.FAILED, None)
        log.warning("request past its deadline: not run", extra={"error": DEADLINE_EXCEEDED})
        return "failed"
    return "skipped"


def _load(ctx: WorkerContext, request_ids: list[str]) -> list[tuple[JobSpec, bytes | None]]:
    """Each request's spec and input image, in one round trip."""
    with ctx.redis.pipeline(transaction=False) as pipe:
        for request_id in request_ids:
            pipe.hget(ctx.keys.request(request_id), RequestField.SPEC)
            pipe.get(ctx.keys.input_image(request_id))
        replies = pipe.execute()
    return [(JobSpec.from_json(replies[i]), replies[i + 1]) for i in range(0, len(replies), 2)]


def _generate(ctx: WorkerContext, jobs: list[tuple[JobSpec, bytes]]) -> dict[str, str]:
    """Runs `jobs` in one engine call and ends each request; {request id: outcome}.

    A cancel of any request stops the call: the cancelled ones end FAILED "cancelled", the others
    run again (still held by this worker). Out of GPU memory, the batch runs again in halves (a
    request alone once more), and a request that still does not fit ends FAILED "out of GPU memory"
    (worker/gpu_faults.py). Any other engine error fails them all with its reason."""
    from worker.engine import GenerationRequest
    from worker.errors import JobCancelled, JobInputError, ModelLoadError

    batch = [GenerationRequest(spec=spec, image=decode_handoff(data)) for spec, data in jobs]
    outcomes: dict[str, str] = {}
    # The engine calls still to make: (requests, whether they already run again after an out of memory).
    pending: list[tuple[list[Any], bool]] = [(batch, False)]

    def fail_all(error: str, error_status: int) -> dict[str, str]:
        for job in [*batch, *(job for rest, _ in pending for job in rest)]:
            outcomes[job.spec.request_id] = _fail(ctx, job.spec, error, error_status)
        return outcomes

    while pending:
        batch, retried = pending.pop(0)
        watch = JobWatch(ctx, [job.spec for job in batch])
        results = None
        try:
            results = ctx.engine.generate(batch, on_step=watch.on_step, should_cancel=watch.should_cancel)
        except JobCancelled:
            batch = _drop_stopped(ctx, batch, watch, outcomes)
            if batch:
                log.info("batch restarted without its stopped requests", extra={"batch_size": len(batch)})
                pending.insert(0, (batch, retried))
            continue
        except JobInputError as exc:
            return fail_all(str(exc), 400)
        except ModelLoadError as exc:
            return fail_all(str(exc), 500)
        except redis.RedisError:
            raise  # Redis failed under the job: `_run` hands the requests back once Redis answers
        except Exception as exc:
            if gpu_faults.is_fatal_device_error(exc):
                raise  # the CUDA context is poisoned: `_run` hands the requests back, the worker exits
            if not gpu_faults.is_out_of_memory(exc):
                log.exception("generation failed")
                return fail_all(f"generation failed: {type(exc).__name__}: {exc}", 500)
        if results is None:
            # Out of GPU memory. Freed here, once the exception has let go of the failed call's frames.
            gpu_faults.free_cached_memory()
            again = gpu_faults.split_after_out_of_memory(batch, retried)
            log.warning(
                "out of GPU memory", extra={"batch_size": len(batch), "runs_again": [len(b) for b in again]}
            )
            pending[:0] = [(part, True) for part in again]
            if not again:
                outcomes[batch[0].spec.request_id] = _fail(ctx, batch[0].spec, gpu_faults.OUT_OF_MEMORY, 500)
            continue
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, ServiceError):  # this job alone was refused (prompt too long, NaN output)
                outcomes[job.spec.request_id] = _fail(ctx, job.spec, result.message, result.status_code)
            elif ctx.moderation is not None and ctx.moderation.outputs_flagged(job.spec, result.images):
                # Checked before anything is stored: a flagged output is never kept (CONTRACT 3c).
                outcomes[job.spec.request_id] = _fail(ctx, job.spec, OUTPUT_FLAGGED, BLOCKED_STATUS)
            else:
                outcomes[job.spec.request_id] = _complete(ctx, job.spec, result)
        if not retried:  # (after an out of memory, the time since the start counts the failed calls)
            _record_step_time(
                ctx, [job.spec for job in batch if outcomes[job.spec.request_id] == "completed"]
            )
    return outcomes


def _record_step_time(ctx: WorkerContext, specs: list[JobSpec]) -> None:
    """The batch's wall time from its start (shared by its requests) to its end, for `eta_s`
    (app/core/eta.py). Best effort, as metrics: the requests have ended already."""
    if not specs:
        return
    with contextlib.suppress(redis.RedisError):
        started = ctx.redis.hget(ctx.keys.request(specs[0].request_id), RequestField.STARTED_AT)
        if started:
            eta.record_batch(ctx.redis, ctx.keys, specs, time.time() - float(started))


def _drop_stopped(
    ctx: WorkerContext, batch: list[Any], watch: JobWatch, outcomes: dict[str, str]
) -> list[Any]:
    """After a stopped engine call: cancelled requests end FAILED "cancelled", those past their
    deadline FAILED "deadline exceeded", those taken over by another worker are let go untouched;
    the rest of the batch is returned to run again."""
    flags = list(zip(watch.cancelled, watch.lost, watch.expired, strict=True))
    stopped = [any(flag) for flag in flags]
    if not any(stopped):  # the engine stopped with no flag seen by the watch: treat all as cancelled
        stopped = [True] * len(batch)
        flags = [(True, lost, expired) for _, lost, expired in flags]
    for job, (cancelled, lost, expired) in zip(batch, flags, strict=True):
        if expired and not cancelled:
            outcomes[job.spec.request_id] = _fail(ctx, job.spec, DEADLINE_EXCEEDED, 504)
        elif lost and not cancelled:
            with bind_request_id(job.spec.request_id):
                log.warning("request taken over by another worker: stopped here")
            outcomes[job.spec.request_id] = "lost"
        elif cancelled:
            outcomes[job.spec.request_id] = _fail(ctx, job.spec, CANCELLED, 500)
    return [job for job, stop in zip(batch, stopped, strict=True) if not stop]


def _complete(ctx: WorkerContext, spec: JobSpec, result: Any) -> str:
    outputs = {spec.file_name(i): data for i, data in enumerate(result.images)}
    images = [
        {"file_name": name, "content_type": result.content_type, "file_size": len(data), "seed": seed}
        for (name, data), seed in zip(outputs.items(), result.seeds, strict=True)
    ]
    body = {"images": images, "seeds": result.seeds, "inference_time": result.inference_time}
    with bind_request_id(spec.request_id):
        outcome = as_text(
            ctx.lifecycle.finish(ctx.redis, spec.request_id, ctx.worker_id, completed_fields(body), outputs)
        )
        if outcome == "DONE":
            _record(ctx, spec, Status.COMPLETED, result.inference_time)
            log.info("request completed", extra={"inference_time": round(result.inference_time, 4)})
            return "completed"
        if outcome == "CANCELLED":  # cancelled after its last step: FAILED and refunded, not charged
            _record(ctx, spec, Status.FAILED, None)
            log.warning("request cancelled after its last step", extra={"error": CANCELLED})
            return "failed"
        if outcome == "DEADLINE":  # its Cancel-After passed after its last step: FAILED, refunded
            _record(ctx, spec, Status.FAILED, None)
            log.warning("request past its deadline after its last step", extra={"error": DEADLINE_EXCEEDED})
            return "failed"
    return "lost"


def _fail(ctx: WorkerContext, spec: JobSpec, error: str, error_status: int) -> str:
    with bind_request_id(spec.request_id):
        # The refund is part of finish's Lua step: no process death can fall between the two.
        fields = failed_fields(error, error_status)
        outcome = as_text(ctx.lifecycle.finish(ctx.redis, spec.request_id, ctx.worker_id, fields))
        if outcome == "DONE":
            _record(ctx, spec, Status.FAILED, None)
            log.warning("request failed", extra={"error": error})
            return "failed"
    return "lost"


def _record(ctx: WorkerContext, spec: JobSpec, status: Status, inference_time: float | None) -> None:
    # Metrics are best effort: the request has already ended, a Redis error here must not undo that.
    with contextlib.suppress(redis.RedisError):
        _record_job(ctx, spec, status, inference_time)


def _record_job(ctx: WorkerContext, spec: JobSpec, status: Status, inference_time: float | None) -> None:
    started = ctx.redis.hget(ctx.keys.request(spec.request_id), RequestField.STARTED_AT)
    queue_time = float(started) - spec.created_at if started else None
    with ctx.redis.pipeline(transaction=False) as pipe:
        job_metrics.record_job(
            pipe,
            ctx.keys,
            base_model=spec.base_model,
            status=status.value,
            queue_time_s=queue_time,
            inference_time_s=inference_time,
        )
        pipe.execute()
