"""Lost workers: a PROCESSING request whose worker's heartbeat has expired runs once more on another
worker, or ends FAILED "worker lost" with its credits back (CONTRACT 6). The same passes end QUEUED
requests past SDXL_MAX_QUEUE_TIME_S ("expired in queue"). Every refund is made by the Lua step that
ends the request, never by a second call.

Every worker runs a pass at each heartbeat, and so does the API (so that a request is not left
PROCESSING when no worker at all is left). The decision itself is one Lua script, so two reapers
never act twice on one request. A live worker whose job lost Redis mid-way hands its request back
the same way (`hand_back`): nobody else would, since its heartbeat lives on.
"""

from __future__ import annotations

import logging
import time

import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from app.core.deadlines import end_past_deadlines, record_failed
from app.core.errors import UnreadableRecord
from app.core.job_spec import base_model_of
from app.core.lifecycle import Lifecycle, as_text
from app.core.redis_keys import RedisKeys, RequestField

log = logging.getLogger("sdxl.reaper")


def reap_lost_requests(
    client: redis.Redis, keys: RedisKeys, lifecycle: Lifecycle, *, stranded_after_s: float
) -> dict[str, str]:
    """One pass over the PROCESSING requests whose worker is dead and the QUEUED requests unchecked
    for `stranded_after_s`; returns {request_id: outcome} for those acted on."""
    acted = end_past_deadlines(client, keys, lifecycle)
    acted |= requeue_stranded(client, keys, lifecycle, older_than_s=stranded_after_s)
    for raw_id in client.zrange(keys.processing, 0, -1):
        request_id = raw_id.decode()
        try:
            outcome = _reap_one(client, keys, lifecycle, request_id)
        except UnreadableRecord as exc:
            quarantine(client, keys, request_id, str(exc))
            continue
        except redis.RedisError:
            raise
        except Exception:
            # One bad record fails alone: logged with its id, the pass goes on to the others.
            log.exception("reaper: record skipped", extra={"request_id": request_id})
            continue
        if outcome != "ALIVE":
            acted[request_id] = outcome
    return acted


def _reap_one(client: redis.Redis, keys: RedisKeys, lifecycle: Lifecycle, request_id: str) -> str:
    worker_id, spec_json = client.hmget(keys.request(request_id), [RequestField.WORKER, RequestField.SPEC])
    base_model = base_model_of(spec_json)
    outcome = as_text(
        lifecycle.reap(client, request_id, (worker_id or b"").decode(), keys.queue_name(base_model))
    )
    if outcome != "ALIVE":
        _settle(client, keys, request_id, base_model, outcome)
        if worker_id and outcome in ("REQUEUED", "FAILED"):
            retire_rq_worker(client, worker_id.decode())
    return outcome


def quarantine(client: redis.Redis, keys: RedisKeys, request_id: str, why: str, index: str = "") -> None:
    """Out of the processing set, so that no pass trips on it again; its hash stays (until its TTL)
    for whoever wants to look at it, and the log says which record and why."""
    client.zrem(index or keys.processing, request_id)
    log.error("reaper: unreadable record quarantined", extra={"request_id": request_id, "error": why})


def retire_rq_worker(client: redis.Redis, worker_id: str) -> None:
    """A worker found dead leaves RQ's registries too (`rq:workers` and its queues' sets), and its
    `rq:worker:*` hash expires in a minute instead of the hour RQ gives a worker mid-job: RQ's own
    `register_death`, as if the worker had stopped. (RQ's worker name is our worker id.)"""
    worker = SimpleWorker.find_by_key(f"rq:worker:{worker_id}", connection=client, serializer=JSONSerializer)
    if worker is not None and worker.death_date is None:
        worker.register_death()


def requeue_stranded(
    client: redis.Redis, keys: RedisKeys, lifecycle: Lifecycle, *, older_than_s: float, limit: int = 500
) -> dict[str, str]:
    """QUEUED requests in no queue (popped by a worker that died before starting them) go back to
    the front of their queue. Each QUEUED request is checked once per `older_than_s`; a live worker
    starts what it pops within milliseconds, and a request started twice is refused by `start`.
    The same check ends those QUEUED past SDXL_MAX_QUEUE_TIME_S ("EXPIRED", refunded)."""
    acted: dict[str, str] = {}
    due = client.zrangebyscore(keys.queued, "-inf", time.time() - older_than_s, start=0, num=limit)
    for raw_id in due:
        request_id = raw_id.decode()
        try:
            base_model = base_model_of(client.hget(keys.request(request_id), RequestField.SPEC))
        except UnreadableRecord as exc:
            client.zrem(keys.queued, request_id)
            log.error(
                "reaper: unreadable queued record quarantined",
                extra={"request_id": request_id, "error": str(exc)},
            )
            continue
        outcome = as_text(lifecycle.strand(client, request_id, keys.queue_name(base_model)))
        if outcome in ("REQUEUED", "FAILED", "EXPIRED"):
            acted[request_id] = outcome
            _settle(client, keys, request_id, base_model, outcome)
    return acted


def hand_back(
    client: redis.Redis, keys: RedisKeys, lifecycle: Lifecycle, request_id: str, worker_id: str
) -> str:
    """A live worker gives up a request it holds (Redis failed under the job, so the job could not
    end it): it runs once more, or ends FAILED "worker lost" with its credits back, as if the worker
    had died. "GONE" when the request had ended after all; "ALIVE" when another worker holds it."""
    base_model = base_model_of(client.hget(keys.request(request_id), RequestField.SPEC))
    outcome = as_text(
        lifecycle.reap(client, request_id, worker_id, keys.queue_name(base_model), hand_back=True)
    )
    _settle(client, keys, request_id, base_model, outcome)
    return outcome


def _settle(client: redis.Redis, keys: RedisKeys, request_id: str, base_model: str, outcome: str) -> None:
    """Metrics and logs of an end the Lua step made (refund included)."""
    if outcome in ("FAILED", "EXPIRED"):
        record_failed(client, keys, base_model)
    if outcome == "EXPIRED":
        log.warning("expired in queue", extra={"request_id": request_id})
    elif outcome in ("FAILED", "REQUEUED"):
        log.warning("worker lost", extra={"request_id": request_id, "outcome": outcome})
