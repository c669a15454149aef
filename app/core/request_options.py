"""What a submission carries beyond its body (CONTRACT 10): the request id its Idempotency-Key
record holds, that record, and its Cancel-After. The submission's enqueue writes them in its one
step (submit.lua), beside the request itself, so they exist exactly when the request does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core import idempotency
from app.core.job_spec import JobSpec
from app.core.redis_keys import RedisKeys, RequestField


@dataclass(frozen=True)
class RequestOptions:
    request_id: str | None = None  # given by the Idempotency-Key's record; None: a fresh one
    idempotency_record: str | None = None
    cancel_after_s: float | None = None  # Cancel-After: seconds from submission (app/core/deadlines.py)

    def write(self, pipe: Any, keys: RedisKeys, spec: JobSpec, ttl: int) -> None:
        """Among the enqueue's writes: what the options add to a new request, with its TTL."""
        # The key's listing index (GET /v2/requests): it lives as long as its newest request may,
        # and loses the entries older than any request can be (no key without a TTL, no growth).
        # Where the request goes back when its key's concurrency limit parked it (_concurrency.lua).
        pipe.hset(keys.request(spec.request_id), RequestField.QUEUE, keys.rq_queue_key(spec.base_model))
        index = keys.key_requests(spec.key_id)
        pipe.zadd(index, {spec.request_id: spec.created_at})
        pipe.zremrangebyscore(index, "-inf", f"({spec.created_at - ttl}")
        pipe.expire(index, ttl)
        if self.idempotency_record:
            pipe.hset(self.idempotency_record, idempotency.STATE, idempotency.CREATED)
            pipe.expire(self.idempotency_record, ttl)
            # (its end gives the record the result TTL, as it gives the request: _end_request.lua)
            pipe.hset(keys.request(spec.request_id), RequestField.IDEMPOTENCY, self.idempotency_record)
        if self.cancel_after_s is not None:
            deadline = spec.created_at + self.cancel_after_s
            pipe.hset(keys.request(spec.request_id), RequestField.DEADLINE, repr(deadline))
            pipe.zadd(keys.deadlines, {spec.request_id: deadline})
