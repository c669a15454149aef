"""ETA (CONTRACT 10): `eta_s`, seconds until a QUEUED or PROCESSING request ends, and the
`Retry-After` of a queue-full 429, from the same measure.

The measure: seconds per denoising step per image, a moving average per base model and size bucket
(`RedisKeys.step_times`), folded in by the workers as each batch completes (`record_batch`). It is
the wall time from the batch's start to its end (loading, text encoding, decode, encoding and the
Redis steps included) over the steps times the images, so a batch of several requests counts for
what it costs per image.

The estimate, for a request of cost c = steps x samples x that average:
- PROCESSING: its remaining steps at the pace of those done since its first step (until its
  second step, c less the time since its start): the time before step 1 (text and image encoding,
  loading) is not a per-step pace, and extrapolated over 100 steps it was a 4x overestimate;
- QUEUED at position p with w live workers serving its model: (what the model's running requests
  have left + p x the mean cost of the requests ahead) / w + c;
- null when no live worker serves the model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from app.core import lua_scripts, worker_registry
from app.core.job_spec import JobSpec, Status
from app.core.lifecycle import as_text, decode_hash
from app.core.redis_keys import RedisKeys, RequestField
from app.core.request_records import RequestRecord

WEIGHT = 0.3  # of a new sample in the moving average: follows a change within a few batches
TTL_S = 7 * 24 * 3600  # the averages outlive any restart, and leave with a prefix no longer used
# Before any measurement of a model: a GPU-class guess (an SDXL step at 1024² on a mid-range GPU).
UNMEASURED_STEP_S = 0.15
AHEAD_SAMPLE = 20  # queued requests ahead whose costs are read; the rest are taken at their mean


def denoising_steps(spec: JobSpec) -> int:
    """The steps img2img runs: diffusers runs int(steps x strength) of the schedule."""
    return max(1, min(int(spec.num_inference_steps * spec.strength), spec.num_inference_steps))


def size_bucket(width: int, height: int) -> int:
    """Buckets √2 apart in pixel count (64x64 is 24, 1024x1024 is 40)."""
    return round(2 * math.log2(max(1, width * height)))


def _field(model: str, bucket: int) -> str:
    return f"{model}:{bucket}"


def record_batch(client: Any, keys: RedisKeys, specs: list[JobSpec], seconds: float) -> None:
    """Folds one completed batch (same model, size and steps: worker/batching.py) into the average."""
    first = specs[0]
    images = sum(spec.samples for spec in specs)
    lua_scripts.run(
        client,
        "step_time",
        keys={"step_times": keys.step_times},
        args={
            "field": _field(first.base_model, size_bucket(first.width, first.height)),
            "seconds": seconds / (denoising_steps(first) * images),
            "weight": WEIGHT,
            "ttl": TTL_S,
        },
    )


class StepTimes:
    """The averages as read once for one estimate."""

    def __init__(self, raw: dict[str, str]) -> None:
        self.table: dict[str, dict[int, float]] = {}
        for name, value in raw.items():
            model, _, bucket = name.rpartition(":")
            self.table.setdefault(model, {})[int(bucket)] = float(value)

    def per_image_step(self, spec: JobSpec) -> float:
        measured = self.table.get(spec.base_model)
        if not measured:
            return UNMEASURED_STEP_S
        bucket = size_bucket(spec.width, spec.height)
        nearest = min(measured, key=lambda b: abs(b - bucket))
        # An unmeasured size: the nearest one's, scaled by the pixel count (2^(1/2) a bucket).
        return measured[nearest] * 2 ** ((bucket - nearest) / 2)

    def cost(self, spec: JobSpec) -> float:
        return denoising_steps(spec) * spec.samples * self.per_image_step(spec)


async def read_step_times(aio: Any, keys: RedisKeys) -> StepTimes:
    return StepTimes(decode_hash(await aio.hgetall(keys.step_times)))


async def live_workers(aio: Any, keys: RedisKeys, model: str) -> int:
    """Workers serving `model` whose heartbeat lives, from the registry of live workers."""
    return len(await worker_registry.live_workers_serving(aio, keys, model))


def _remaining(spec: JobSpec, fields: dict[str, str], steps: StepTimes, now: float) -> float:
    """What a PROCESSING request has left, in seconds."""
    step, total = int(fields.get(RequestField.STEP) or 0), int(fields.get(RequestField.TOTAL) or 0)
    started = float(fields.get(RequestField.STARTED_AT) or now)
    elapsed = max(0.0, now - started)
    first_step_at = fields.get(RequestField.FIRST_STEP_AT)
    if step >= 2 and total >= step and first_step_at is not None:
        return (total - step) * max(0.0, now - float(first_step_at)) / (step - 1)
    return max(0.0, steps.cost(spec) - elapsed)


async def _running_left(aio: Any, keys: RedisKeys, model: str, steps: StepTimes, now: float) -> float:
    """The seconds the model's PROCESSING requests have left, all together."""
    request_ids = [as_text(i) for i in await aio.zrange(keys.processing, 0, -1)]
    if not request_ids:
        return 0.0
    async with aio.pipeline(transaction=False) as pipe:
        for request_id in request_ids:
            pipe.hgetall(keys.request(request_id))
        records = await pipe.execute()
    left = 0.0
    for raw in records:
        fields = decode_hash(raw)
        if fields.get(RequestField.STATUS) != Status.PROCESSING.value or RequestField.SPEC not in fields:
            continue
        spec = JobSpec.from_json(fields[RequestField.SPEC])
        if spec.base_model == model:
            left += _remaining(spec, fields, steps, now)
    return left


async def _queued_ahead(aio: Any, keys: RedisKeys, spec: JobSpec, position: int, steps: StepTimes) -> float:
    """The seconds of the `position` requests ahead (the nearest read, the others at their mean)."""
    if position <= 0:
        return 0.0
    ids = await aio.lrange(keys.rq_queue_key(spec.base_model), 0, min(position, AHEAD_SAMPLE) - 1)
    async with aio.pipeline(transaction=False) as pipe:
        for request_id in ids:
            pipe.hget(keys.request(as_text(request_id)), RequestField.SPEC)
        specs = [JobSpec.from_json(raw) for raw in await pipe.execute() if raw]
    mean = sum(steps.cost(s) for s in specs) / len(specs) if specs else steps.cost(spec)
    return mean * position


async def estimate(
    aio: Any, keys: RedisKeys, record: RequestRecord, position: int | None
) -> tuple[float | None, int]:
    """(`eta_s`, live workers serving the model) of a QUEUED or PROCESSING request."""
    spec = record.spec
    workers = await live_workers(aio, keys, spec.base_model)
    if workers == 0:
        return None, 0
    steps = await read_step_times(aio, keys)
    now = time.time()
    if record.status is Status.PROCESSING:
        return round(_remaining(spec, record.fields, steps, now), 2), workers
    running = await _running_left(aio, keys, spec.base_model, steps, now)
    ahead = await _queued_ahead(aio, keys, spec, position or 0, steps)
    return round((running + ahead) / workers + steps.cost(spec), 2), workers


async def queue_slot_wait_s(aio: Any, keys: RedisKeys, models: Iterable[str]) -> float | None:
    """For a queue-full 429: seconds until some queued request starts (its queue's head, on the
    workers serving it), the least over the models; None when no worker serves a queued model."""
    steps = await read_step_times(aio, keys)
    now = time.time()
    waits = []
    for model in models:
        if not await aio.llen(keys.rq_queue_key(model)):
            continue
        workers = await live_workers(aio, keys, model)
        if workers:
            waits.append(await _running_left(aio, keys, model, steps, now) / workers)
    return min(waits) if waits else None
