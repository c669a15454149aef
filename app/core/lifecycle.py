"""The request state machine, decided inside Redis (Lua) so API, workers and reapers never race.

QUEUED -> PROCESSING -> COMPLETED | FAILED, plus cancel (QUEUED -> FAILED at once, PROCESSING flagged)
and reap (PROCESSING with a dead worker -> QUEUED again once, then FAILED "worker lost"), and the
queue-time limit (QUEUED too long -> FAILED "expired in queue"). Every FAILED end is refunded in the
same Lua step that ends the request (app/core/lua/_end_request.lua).
Torch- and web-free: the worker calls it with a sync client, the API with an async one;
`lua_scripts.run` serves both.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from app.core import lua_scripts
from app.core.job_spec import Status
from app.core.redis_keys import RedisKeys, RequestField

MAX_ATTEMPTS = 2  # a request whose worker died runs once more, then fails "worker lost"


@dataclass(frozen=True)
class Lifecycle:
    keys: RedisKeys
    result_ttl_s: int
    max_queue_time_s: float = 0  # SDXL_MAX_QUEUE_TIME_S (0: no limit)

    def _ending(self, request_id: str, **keys: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The keys and arguments every script that may end a request takes (_end_request.lua)."""
        ending_keys = {
            "request": self.keys.request(request_id),
            "done": self.keys.done(request_id),
            "input": self.keys.input_image(request_id),
            "webhooks": self.keys.webhooks,
            "wake": self.keys.webhook_wake,
            "queued": self.keys.queued,
            "processing": self.keys.processing,
            "key_index": self.keys.api_key_index,
            "rq_job": self.keys.rq_job(request_id),
            "events": self.keys.events(request_id),
            **keys,
        }
        args = {"request_id": request_id, "ttl": self.result_ttl_s, "key_prefix": self.keys.api_key("")}
        return ending_keys, args

    def start(self, client: Any, request_id: str, worker_id: str) -> Any:
        """Returns "OK" when this worker now holds the request, "PARKED" when its key's concurrency
        limit makes it wait, else the status that prevented it."""
        return lua_scripts.run(
            client,
            "start",
            keys={
                "request": self.keys.request(request_id),
                "processing": self.keys.processing,
                "queued": self.keys.queued,
                "events": self.keys.events(request_id),
                "key_index": self.keys.api_key_index,
            },
            args={
                "request_id": request_id,
                "worker": worker_id,
                "now": time.time(),
                "key_prefix": self.keys.api_key(""),
            },
        )

    def finish(
        self,
        client: Any,
        request_id: str,
        worker_id: str,
        fields: dict[str, Any],
        outputs: dict[str, bytes] | None = None,
    ) -> Any:
        """Ends the request with `fields` (status, error or result...) and stores outputs, atomically;
        a FAILED end is refunded in the same step.

        Returns "DONE", "CANCELLED" (a cancel was accepted before this completion: FAILED
        "cancelled", refunded, outputs dropped) or "NOT_HELD" (this worker no longer holds it)."""
        outputs = outputs or {}
        keys, args = self._ending(request_id)
        keys["outputs"] = [self.keys.output(request_id, name) for name in outputs]
        text_fields = {name: str(value) for name, value in fields.items()}
        return lua_scripts.run(
            client,
            "finish",
            keys=keys,
            args={
                **args,
                "worker": worker_id,
                "now": time.time(),
                "fields": json.dumps(text_fields),
                "data": list(outputs.values()),
            },
        )

    def cancel(self, client: Any, request_id: str, queue_name: str) -> Any:
        """ "CANCELLED" (was queued, or already ended by a cancel: FAILED, refunded), "REQUESTED"
        (running: stops at the next step), "FINISHED" (ended otherwise) or "MISSING"."""
        keys, args = self._ending(request_id, queue=f"rq:queue:{queue_name}")
        return lua_scripts.run(client, "cancel", keys=keys, args={**args, "now": time.time()})

    def strand(self, client: Any, request_id: str, queue_name: str) -> Any:
        """ "GONE" (not QUEUED any more), "EXPIRED" (past SDXL_MAX_QUEUE_TIME_S: FAILED, refunded),
        "WAITING" (still in its queue), "REQUEUED" (was in no queue: back at the front) or "FAILED"
        (its RQ job expired: worker lost, refunded)."""
        keys, args = self._ending(request_id, queue=f"rq:queue:{queue_name}")
        args |= {"now": time.time(), "max_queue_time": self.max_queue_time_s}
        return lua_scripts.run(client, "strand", keys=keys, args=args)

    def deadline(self, client: Any, request_id: str, queue_name: str) -> Any:
        """A request whose Cancel-After deadline has come: "EXCEEDED" (was QUEUED: FAILED "deadline
        exceeded", refunded), "RUNNING" (its worker stops it at the next step), "EARLY" or "GONE"."""
        keys, args = self._ending(request_id, queue=f"rq:queue:{queue_name}", deadlines=self.keys.deadlines)
        return lua_scripts.run(client, "deadline", keys=keys, args={**args, "now": time.time()})

    def reap(
        self, client: Any, request_id: str, worker_id: str, queue_name: str, *, hand_back: bool = False
    ) -> Any:
        """ "ALIVE", "GONE", "REQUEUED" or "FAILED" (worker lost, refunded in the same step).

        `worker_id` is the worker the caller saw holding the request: nothing happens when another
        has taken it over since. `hand_back`: that worker itself gives the request up (it is alive,
        but Redis failed under its job), so its live heartbeat does not count."""
        keys, args = self._ending(
            request_id, queue=f"rq:queue:{queue_name}", heartbeat=self.keys.worker(worker_id)
        )
        args |= {
            "now": time.time(),
            "max_attempts": MAX_ATTEMPTS,
            "seen_worker": worker_id,
            "hand_back": "1" if hand_back else "0",
        }
        return lua_scripts.run(client, "reap", keys=keys, args=args)

    def progress(
        self, client: Any, request_ids: list[str], worker_id: str, step: int | None, total: int
    ) -> Any:
        """Writes a step's progress for the requests `worker_id` still holds; for each request 0 (run
        on), 1 (cancelled), 2 (not this worker's any more) or 3 (past its Cancel-After deadline).
        `step=None` only reads."""
        return lua_scripts.run(
            client,
            "progress",
            keys={"requests": [self.keys.request(request_id) for request_id in request_ids]},
            args={
                "worker": worker_id,
                "step": "" if step is None else step,
                "total": total,
                "now": time.time(),
                "events_prefix": self.keys.events(""),
                "ids": request_ids,
            },
        )


def completed_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {
        RequestField.STATUS: Status.COMPLETED.value,
        RequestField.RESULT: json.dumps(result, separators=(",", ":")),
        RequestField.FINISHED_AT: time.time(),
    }


def failed_fields(error: str, error_status: int) -> dict[str, Any]:
    return {
        RequestField.STATUS: Status.FAILED.value,
        RequestField.ERROR: error,
        RequestField.ERROR_STATUS: error_status,
        RequestField.FINISHED_AT: time.time(),
    }


def as_text(value: Any) -> Any:
    """A script's reply as text (redis-py gives bytes unless the client decodes responses)."""
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw: dict[Any, Any]) -> dict[str, str]:
    """Redis returns bytes; the request hash holds only text fields."""
    return {as_text(k): as_text(v) for k, v in raw.items()}
