"""The RQ job function (enqueued by dotted path, JSON payload: the request id only).

RQ's SimpleWorker runs it in the worker's own process, where `WorkerContext` holds the resident
engine; the job reads its spec and input image from Redis, runs the engine, and ends the request
through the Lua state machine (app/lifecycle.py). Failures are data: the request ends FAILED with
the reason and its credits back; only the process's own death is left to the reaper.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from PIL import Image

from app import admission, metrics
from app.contract import CANCELLED, Field, JobSpec, Keys, Status
from app.lifecycle import Lifecycle, completed_fields, failed_fields
from app.logging_setup import request_id_var

log = logging.getLogger("sdxl.worker")


@dataclass
class WorkerContext:
    worker_id: str
    keys: Keys
    lifecycle: Lifecycle
    redis: redis.Redis
    engine: Any  # worker.engine.Engine (imported lazily: torch)
    current: dict[str, Any] = field(default_factory=dict)
    # Requests this worker still holds (PROCESSING) whose job Redis failed under: the heartbeat
    # thread hands them back once Redis answers (app.reaper.hand_back).
    orphans: set[str] = field(default_factory=set)


_context: WorkerContext | None = None


def install_context(context: WorkerContext | None) -> None:
    """Called once by the worker service at start: the engine stays resident between jobs."""
    global _context
    _context = context


def run_request(request_id: str) -> str:
    if _context is None:
        raise RuntimeError("worker.tasks.run_request called outside a worker service")
    token = request_id_var.set(request_id)
    try:
        return _run(_context, request_id)
    finally:
        request_id_var.reset(token)


def _run(ctx: WorkerContext, request_id: str) -> str:
    try:
        # (A start whose reply was lost may still have made the request ours: hand it back too.)
        outcome = ctx.lifecycle.start(ctx.redis, request_id, ctx.worker_id)
    except redis.RedisError:
        ctx.orphans.add(request_id)
        raise
    outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
    if outcome != "OK":
        log.info("skipping request", extra={"reason": f"status is {outcome}"})
        return "skipped"
    ctx.current["request_id"] = request_id
    try:
        with ctx.redis.pipeline(transaction=False) as pipe:
            pipe.hget(ctx.keys.request(request_id), Field.SPEC)
            pipe.get(ctx.keys.input_image(request_id))
            spec_json, image_bytes = pipe.execute()
        spec = JobSpec.from_json(spec_json)
        if image_bytes is None:
            return _fail(ctx, spec, "input image expired before the request started", 500)
        return _generate(ctx, spec, image_bytes)
    except redis.RedisError:
        # The request may still be PROCESSING in this worker's name, and the reaper leaves it alone
        # while our heartbeat lives: hand it back once Redis answers, or it would stay stuck.
        ctx.orphans.add(request_id)
        raise
    finally:
        ctx.current.pop("request_id", None)


def _generate(ctx: WorkerContext, spec: JobSpec, image_bytes: bytes) -> str:
    from worker.engine import GenerationRequest
    from worker.errors import JobCancelled, JobInputError, ModelLoadError

    request_key = ctx.keys.request(spec.request_id)
    # Read once here, then refreshed by each step's progress write: one round trip per step.
    cancel_seen = bool(ctx.redis.hexists(request_key, Field.CANCEL))

    def on_step(step: int, total: int) -> None:
        nonlocal cancel_seen
        # One round trip per step: publish progress and read the cancel flag together.
        with ctx.redis.pipeline(transaction=False) as pipe:
            pipe.hset(request_key, mapping={Field.STEP: step, Field.TOTAL: total})
            pipe.hget(request_key, Field.CANCEL)
            _, cancel = pipe.execute()
        cancel_seen = cancel is not None

    def should_cancel() -> bool:
        return cancel_seen

    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    try:
        [result] = ctx.engine.generate(
            [GenerationRequest(spec=spec, image=image)], on_step=on_step, should_cancel=should_cancel
        )
    except JobCancelled:
        return _fail(ctx, spec, CANCELLED, 500)
    except JobInputError as exc:
        return _fail(ctx, spec, str(exc), 400)
    except ModelLoadError as exc:
        return _fail(ctx, spec, str(exc), 500)
    except redis.RedisError:
        raise  # Redis failed under the job: `_run` hands the request back once Redis answers
    except Exception as exc:
        log.exception("generation failed")
        return _fail(ctx, spec, f"generation failed: {type(exc).__name__}: {exc}", 500)

    outputs = {spec.file_name(i): data for i, data in enumerate(result.images)}
    images = [
        {"file_name": name, "content_type": result.content_type, "file_size": len(data), "seed": seed}
        for (name, data), seed in zip(outputs.items(), result.seeds, strict=True)
    ]
    body = {"images": images, "seeds": result.seeds, "inference_time": result.inference_time}
    held = ctx.lifecycle.finish(ctx.redis, spec.request_id, ctx.worker_id, completed_fields(body), outputs)
    if held:
        _record(ctx, spec, Status.COMPLETED, result.inference_time)
        log.info("request completed", extra={"inference_time": round(result.inference_time, 4)})
    return "completed"


def _fail(ctx: WorkerContext, spec: JobSpec, error: str, error_status: int) -> str:
    held = ctx.lifecycle.finish(ctx.redis, spec.request_id, ctx.worker_id, failed_fields(error, error_status))
    if held:
        admission.refund_sync(ctx.redis, ctx.keys, spec.request_id)
        _record(ctx, spec, Status.FAILED, None)
        log.warning("request failed", extra={"error": error})
    return "failed"


def _record(ctx: WorkerContext, spec: JobSpec, status: Status, inference_time: float | None) -> None:
    # Metrics are best effort: the request has already ended, a Redis error here must not undo that.
    with contextlib.suppress(redis.RedisError):
        _record_job(ctx, spec, status, inference_time)


def _record_job(ctx: WorkerContext, spec: JobSpec, status: Status, inference_time: float | None) -> None:
    started = ctx.redis.hget(ctx.keys.request(spec.request_id), Field.STARTED_AT)
    queue_time = float(started) - spec.created_at if started else None
    with ctx.redis.pipeline(transaction=False) as pipe:
        metrics.record_job(
            pipe,
            ctx.keys,
            base_model=spec.base_model,
            status=status.value,
            queue_time_s=queue_time,
            inference_time_s=inference_time,
        )
        pipe.execute()
