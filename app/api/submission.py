"""Submission: the path every v1 and v2 request takes from a validated body to a queued job.

Round trips to Redis: two Lua calls. Authentication and rate limit (done by the route before the
body is read), then the queue-full check, the credits and the writes (the request record, the input
image, the RQ job) in one step (submit.lua, through `admission.admit`): no moment exists at which
credits are taken and the request is not written, whichever process dies when.

The writes, RQ's own among them, are recorded on a redis-py pipeline that is never executed and
committed by that one script: no thread, no WATCH round trips, and RQ still decides what an
enqueued job is.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from app.core import admission
from app.core.api_keys import ApiKey
from app.core.decode_budget import DecodeBudget
from app.core.errors import Conflict, Unavailable
from app.core.image_decode import PreparedImage
from app.core.image_intake import load_input_bytes, load_input_image
from app.core.job_spec import JOB_FUNCTION, JobSpec, Status
from app.core.redis_keys import RedisKeys, RequestField
from app.core.request_model import GenerationParams
from app.core.request_options import RequestOptions
from app.core.settings import Settings
from app.core.webhook_urls import check_webhook_url

# RQ's own per-job limit; generation is bounded by steps, this only catches a wedged worker.
JOB_TIMEOUT_S = 3600
NO_OPTIONS = RequestOptions()


@dataclass(frozen=True)
class Submitted:
    spec: JobSpec
    key: ApiKey
    remaining_credits: int | None
    ignored_fields: tuple[str, ...] = ()
    replayed: bool = False  # a duplicate of an earlier submission with the same Idempotency-Key


class Submitter:
    def __init__(self, settings: Settings, model_names: list[str], aio: Any, sync: redis.Redis) -> None:
        self.settings = settings
        self.keys = RedisKeys(settings.redis_prefix)
        self.model_names = model_names
        # One per process: what this API's input-image decodes may hold in memory at once.
        self.decode_budget = DecodeBudget(settings.decode_memory_mb * 2**20, wait_s=settings.decode_wait_s)
        self.aio = aio
        self.sync = sync
        # One Queue object per model: rq caches the server version on it (one INFO call, not one per job).
        self._queues = {
            name: Queue(self.keys.queue_name(name), connection=sync, serializer=JSONSerializer)
            for name in model_names
        }

    async def prepare(self, params: GenerationParams) -> PreparedImage:
        if params.webhook_url:  # before fetching an image for a request that will be refused
            check_webhook_url(params.webhook_url, self.settings)
        if isinstance(params.image, bytes):
            return await load_input_bytes(
                params.image, self.settings, resize_to=params.resize_to, budget=self.decode_budget
            )
        return await load_input_image(
            params.image, self.settings, resize_to=params.resize_to, budget=self.decode_budget
        )

    async def submit(
        self,
        key: ApiKey,
        params: GenerationParams,
        image: PreparedImage,
        *,
        base_url: str,
        options: RequestOptions = NO_OPTIONS,
    ) -> Submitted:
        """`base_url`: the public base URL the request came in on (for its webhook's output URLs);
        `options`: what the request carries beyond its body (Idempotency-Key...)."""
        request_id = options.request_id or str(uuid.uuid4())
        cost = params.samples * self.settings.credits_per_image
        spec = params.to_job_spec(
            request_id=request_id,
            width=image.width,
            height=image.height,
            input_key=self.keys.input_image(request_id),
            key_id=key.id,
            cost=cost,
        )
        if key.unmoderated:
            spec = dataclasses.replace(spec, moderated=False)
        queue = self._queues[spec.base_model]
        if queue.redis_server_version is None:  # rq asks once per Queue (INFO), on its sync client
            await anyio.to_thread.run_sync(queue.get_redis_server_version)
        try:
            remaining = await admission.admit(
                self.aio,
                self.keys,
                self.settings,
                key,
                request_id=request_id,
                cost=cost,
                queue_keys=[self.keys.rq_queue_key(name) for name in self.model_names],
                pending_ttl_s=self.settings.pending_ttl_s,
                commands=self._writes(queue, spec, image.handoff, params.webhook_url, base_url, options),
                idempotency_record=options.idempotency_record,
            )
        except (redis.RedisError, admission.Superseded, Conflict):
            # Nothing was taken, or the script ran with its reply lost (a Conflict: the client's one
            # retry on a lost connection found the request its first try wrote): then the request
            # exists, and its id lets the client see it.
            raise Unavailable(headers={"x-request-id": request_id}) from None
        return Submitted(
            spec=spec, key=key, remaining_credits=remaining, ignored_fields=params.ignored_fields
        )

    def _writes(
        self,
        queue: Queue,
        spec: JobSpec,
        image: bytes,
        webhook_url: str | None,
        base_url: str,
        options: RequestOptions,
    ) -> list[tuple[Any, ...]]:
        """The submission's writes, recorded on a pipeline that never runs (a redis-py pipeline
        buffers everything until `execute`, so recording does no I/O)."""
        request_key = self.keys.request(spec.request_id)
        record = {
            RequestField.STATUS: Status.QUEUED.value,
            RequestField.SPEC: spec.to_json(),
            RequestField.KEY_ID: spec.key_id,
            RequestField.COST: spec.cost,
            RequestField.CREATED_AT: spec.created_at,
            RequestField.ATTEMPTS: 0,
        }
        if webhook_url:
            record[RequestField.WEBHOOK] = webhook_url
            # The webhook's body names absolute output URLs; the deliverer has no HTTP request at hand.
            record[RequestField.BASE_URL] = base_url
        ttl = self.settings.pending_ttl_s
        pipe = self.sync.pipeline(transaction=True)
        pipe.multi()  # rq adds its commands to a transaction it is given
        pipe.hset(request_key, mapping=record)
        pipe.expire(request_key, ttl)
        pipe.set(spec.input_key, image, ex=ttl)
        pipe.zadd(self.keys.queued, {spec.request_id: spec.created_at})
        options.write(pipe, self.keys, spec, ttl)
        queue.enqueue_call(
            JOB_FUNCTION,
            args=(spec.request_id,),
            job_id=spec.request_id,
            timeout=JOB_TIMEOUT_S,
            result_ttl=0,
            failure_ttl=self.settings.result_ttl_s,
            ttl=ttl,
            pipeline=pipe,
        )
        return [command for command, _options in pipe.command_stack]
