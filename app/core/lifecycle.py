"""The request state machine, decided inside Redis (Lua) so API, workers and reapers never race.

QUEUED -> PROCESSING -> COMPLETED | FAILED, plus cancel (QUEUED -> FAILED at once, PROCESSING flagged)
and reap (PROCESSING with a dead worker -> QUEUED again once, then FAILED "worker lost").
Torch- and web-free: the worker calls it with a sync client, the API with an async one; the script
objects returned by `register_script` work for both.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from app.core.job_spec import CANCELLED, WORKER_LOST, Status
from app.core.redis_keys import RedisKeys, RequestField

MAX_ATTEMPTS = 2  # a request whose worker died runs once more, then fails "worker lost"


@cache
def script_text(name: str) -> str:
    """A script's text; those that end a request get the shared `end_request` function in front."""
    text = resources.files("app.core.lua").joinpath(f"{name}.lua").read_text()
    if "end_request(" in text:
        text = resources.files("app.core.lua").joinpath("_end_request.lua").read_text() + text
    return text


@dataclass(frozen=True)
class Lifecycle:
    keys: RedisKeys
    result_ttl_s: int

    def _script(self, client: Any, name: str) -> Any:
        # register_script only hashes the text; EVALSHA falls back to EVAL once per connection.
        return client.register_script(script_text(name))

    def start(self, client: Any, request_id: str, worker_id: str) -> Any:
        """Returns "OK" when this worker now holds the request, else the status that prevented it."""
        return self._script(client, "start")(
            keys=[self.keys.request(request_id), self.keys.processing, self.keys.queued],
            args=[request_id, worker_id, time.time()],
        )

    def finish(
        self,
        client: Any,
        request_id: str,
        worker_id: str,
        fields: dict[str, Any],
        outputs: dict[str, bytes] | None = None,
    ) -> Any:
        """Ends the request with `fields` (status, error or result...) and stores outputs, atomically.

        Returns 1, or 0 when this worker no longer holds the request (it was presumed lost)."""
        outputs = outputs or {}
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, value]
        return self._script(client, "finish")(
            keys=[
                self.keys.request(request_id),
                self.keys.processing,
                self.keys.done(request_id),
                self.keys.input_image(request_id),
                self.keys.webhooks,
                self.keys.webhook_wake,
                *[self.keys.output(request_id, name) for name in outputs],
            ],
            args=[request_id, worker_id, self.result_ttl_s, len(fields), *flat, *outputs.values()],
        )

    def cancel(self, client: Any, request_id: str, queue_name: str) -> Any:
        """ "CANCELLED" (was queued: now FAILED, refund due), "REQUESTED" (running: stops at the next
        step), "FINISHED" (already terminal) or "MISSING"."""
        return self._script(client, "cancel")(
            keys=[
                self.keys.request(request_id),
                f"rq:queue:{queue_name}",
                self.keys.done(request_id),
                self.keys.input_image(request_id),
                self.keys.webhooks,
                self.keys.webhook_wake,
                self.keys.queued,
            ],
            args=[request_id, time.time(), self.result_ttl_s, CANCELLED],
        )

    def strand(self, client: Any, request_id: str, queue_name: str) -> Any:
        """ "GONE" (not QUEUED any more), "WAITING" (still in its queue), "REQUEUED" (was in no
        queue: back at the front) or "FAILED" (its RQ job expired: worker lost, refund due)."""
        return self._script(client, "strand")(
            keys=[
                self.keys.request(request_id),
                f"rq:queue:{queue_name}",
                f"rq:job:{request_id}",
                self.keys.queued,
                self.keys.done(request_id),
                self.keys.input_image(request_id),
                self.keys.webhooks,
                self.keys.webhook_wake,
            ],
            args=[request_id, time.time(), self.result_ttl_s, WORKER_LOST],
        )

    def reap(
        self, client: Any, request_id: str, worker_id: str, queue_name: str, *, hand_back: bool = False
    ) -> Any:
        """ "ALIVE", "GONE", "REQUEUED" or "FAILED" (worker lost: refund due).

        `worker_id` is the worker the caller saw holding the request: nothing happens when another
        has taken it over since. `hand_back`: that worker itself gives the request up (it is alive,
        but Redis failed under its job), so its live heartbeat does not count."""
        return self._script(client, "reap")(
            keys=[
                self.keys.request(request_id),
                self.keys.processing,
                self.keys.worker(worker_id),
                f"rq:queue:{queue_name}",
                f"rq:job:{request_id}",
                self.keys.done(request_id),
                self.keys.input_image(request_id),
                self.keys.webhooks,
                self.keys.webhook_wake,
                self.keys.queued,
            ],
            args=[
                request_id,
                time.time(),
                self.result_ttl_s,
                MAX_ATTEMPTS,
                WORKER_LOST,
                worker_id,
                "1" if hand_back else "0",
            ],
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
