"""Names in Redis: every key and queue name this server creates (`RedisKeys`), and the field names
of the request hash (`RequestField`) and of an API key's hash (`KeyField`), shared with the Lua
scripts (app/core/lua_scripts.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """Every Redis key and queue name this server creates, under one prefix."""

    prefix: str

    def request(self, request_id: str) -> str:
        """Hash with the request's status, spec, progress, result and accounting."""
        return f"{self.prefix}:req:{request_id}"

    def input_image(self, request_id: str) -> str:
        return f"{self.prefix}:in:{request_id}"

    def output(self, request_id: str, file_name: str) -> str:
        return f"{self.prefix}:out:{request_id}:{file_name}"

    def done(self, request_id: str) -> str:
        """A list the worker pushes to when the request ends; sync waiters BLPOP it."""
        return f"{self.prefix}:done:{request_id}"

    def events(self, request_id: str) -> str:
        """Redis Stream of the request's changes (status, progress, result), read with a blocking
        XREAD by the live status routes; it expires with the request (app/core/lua/_events.lua)."""
        return f"{self.prefix}:events:{request_id}"

    @property
    def step_times(self) -> str:
        """Hash `<model>:<size bucket>` -> moving average of seconds per denoising step per image,
        kept by the workers, read for `eta_s` (app/core/eta.py)."""
        return f"{self.prefix}:step_times"

    def key_requests(self, key_id: str) -> str:
        """Sorted set of one API key's request ids (score: submission time), for GET /v2/requests;
        it expires with the newest of them, and entries past any request's TTL are trimmed."""
        return f"{self.prefix}:keyreqs:{key_id}"

    @property
    def deadlines(self) -> str:
        """Sorted set of the ids of requests with a Cancel-After (score: their deadline), for ending
        the queued ones at their deadline (app/core/deadlines.py)."""
        return f"{self.prefix}:deadlines"

    @property
    def processing(self) -> str:
        """Sorted set of PROCESSING request ids (score: start time), watched for lost workers."""
        return f"{self.prefix}:processing"

    @property
    def queued(self) -> str:
        """Sorted set of request ids that were QUEUED when last seen (score: when last checked), for
        finding one a worker popped and died with before starting it (app/reaper.py)."""
        return f"{self.prefix}:queued"

    def worker(self, worker_id: str) -> str:
        """Heartbeat of one worker, with a TTL: gone means dead."""
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def live_workers(self) -> str:
        """Sorted set of live worker ids (score: when their heartbeat expires, in ms), the registry
        that /readyz, /metrics and the healthchecks read instead of scanning (worker_registry.py)."""
        return f"{self.prefix}:workers"

    def workers_serving(self, base_model: str) -> str:
        """Sorted set of the live workers that serve one base model, scored like `live_workers`."""
        return f"{self.prefix}:workers:{base_model}"

    def queue_name(self, base_model: str) -> str:
        """RQ queue name for one base model (rq stores it under `rq:queue:<name>`)."""
        return f"{self.prefix}.{base_model}"

    def rq_queue_key(self, base_model: str) -> str:
        return f"rq:queue:{self.queue_name(base_model)}"

    @staticmethod
    def rq_job(request_id: str) -> str:
        """RQ's hash for a request's job (the RQ job id is the request id, see app/api/submission.py)."""
        return f"rq:job:{request_id}"

    def idempotency(self, key_id: str, idempotency_key: str) -> str:
        """Hash {request_id, digest, state} of one Idempotency-Key of one API key (the header's
        value hashed: bounded, and no odd characters in key names), app/core/idempotency.py."""
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
        return f"{self.prefix}:idem:{key_id}:{digest}"

    def api_key(self, key_hash: str) -> str:
        return f"{self.prefix}:key:{key_hash}"

    @property
    def api_key_index(self) -> str:
        """Hash from key id to key hash, for listing and for revoking by id."""
        return f"{self.prefix}:keys"

    def rate(self, key_id: str) -> str:
        return f"{self.prefix}:rate:{key_id}"

    def metrics(self, name: str) -> str:
        return f"{self.prefix}:metrics:{name}"

    @property
    def webhooks(self) -> str:
        """Sorted set of webhook deliveries still to make, `<attempt>:<request id>` scored by when."""
        return f"{self.prefix}:webhooks"

    @property
    def webhook_wake(self) -> str:
        """A list pushed to when a delivery is added: the deliverers BLPOP it instead of polling."""
        return f"{self.prefix}:webhooks:wake"


# Fields of the request hash (RedisKeys.request). Written by the API at submission and by the worker.
class RequestField:
    STATUS = "status"
    SPEC = "spec"
    KEY_ID = "key_id"
    COST = "cost"
    CREATED_AT = "created_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    ERROR = "error"
    ERROR_STATUS = "error_status"  # the HTTP status a FAILED request deserves on v1 (400, 500 or 504)
    WORKER = "worker"
    ATTEMPTS = "attempts"
    STEP = "step"
    TOTAL = "total"
    FIRST_STEP_AT = "first_step_at"  # worker clock at step 1 of the current run: the ETA's pace
    RESULT = "result"  # JSON: {"images": [...], "seeds": [...], "inference_time": s}
    CANCEL = "cancel"  # set to 1 when a cancel was asked for a PROCESSING request
    REFUNDED = "refunded"  # set once credits were given back (exactly once)
    WEBHOOK = "webhook_url"
    DEADLINE = "deadline"  # Cancel-After: when (epoch seconds) it ends "deadline exceeded" unless ended
    IDEMPOTENCY = "idempotency"  # its Idempotency-Key record's key: it expires with the request
    QUEUE = "queue"  # its RQ queue's key: where a request parked by its key's concurrency goes back
    BASE_URL = "base_url"  # the public base URL the request came in on, for the webhook's output URLs


class KeyField:
    """Field names of a key hash (shared with the Lua scripts, see app/core/lua_scripts.py)."""

    ID = "id"
    NAME = "name"
    CREATED_AT = "created_at"
    CREDITS = "credits"
    RPM = "rpm"
    MODELS = "models"
    DISABLED = "disabled"
    USED = "used"  # credits spent: reserved at submission, given back by the refund of a FAILED request
    UNMODERATED = "unmoderated"  # "1": content blocks (CONTRACT 3c) do not apply to its requests
    CONCURRENCY = "concurrency"  # most of the key's requests PROCESSING at once (absent: no limit)
