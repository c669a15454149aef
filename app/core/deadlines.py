"""`Cancel-After` (CONTRACT 10): a request that has not ended by its deadline ends FAILED
"deadline exceeded", refunded in the Lua step that ends it.

The deadline is a field of the request (written with it at submission) and an entry of one sorted
set scored by deadline. Three places enforce it: a worker's start refuses a request past it (it
never runs) and its progress step stops one that runs past it at the next denoising step
(start.lua, progress.lua; finish.lua will not complete it either); and the sweep below, run with
every reaper pass (API and workers, every heartbeat third), ends the QUEUED requests whose deadline
has come while they wait (deadline.lua).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from app.core import job_metrics
from app.core.errors import InvalidInput, UnreadableRecord
from app.core.job_spec import Status, base_model_of
from app.core.lifecycle import Lifecycle, as_text
from app.core.redis_keys import RedisKeys, RequestField

log = logging.getLogger("sdxl.deadlines")

HEADER = "cancel-after"
MAX_CANCEL_AFTER_S = 24 * 3600
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")  # Go's spelling: 90s, 5m, 1h30m, 1.5m
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_cancel_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from the `Cancel-After` header (a number of seconds, or a duration such as `90s`,
    `5m`, `1h30m`); None when absent; 400 when malformed, not above 0, or above 24 h."""
    value = headers.get(HEADER)
    if value is None:
        return None
    text = value.strip().lower()
    seconds = None
    if _NUMBER.fullmatch(text):
        seconds = float(text)
    elif _DURATION.fullmatch(text):
        seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))
    if seconds is None or not 0 < seconds <= MAX_CANCEL_AFTER_S:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidInput(
            "Cancel-After must be a number of seconds or a duration such as 90s, 5m or 1h30m, "
            f"above 0 and at most 24h; got {shown!r}"
        )
    return seconds


def end_past_deadlines(
    client: Any, keys: RedisKeys, lifecycle: Lifecycle, *, limit: int = 500
) -> dict[str, str]:
    """One pass (sync client): the requests whose deadline has come; {request_id: "EXCEEDED"} for
    those it ended. Running ones stay indexed until they end (their worker stops them)."""
    acted: dict[str, str] = {}
    due = client.zrangebyscore(keys.deadlines, "-inf", time.time(), start=0, num=limit)
    for raw_id in due:
        request_id = as_text(raw_id)
        try:
            base_model = base_model_of(client.hget(keys.request(request_id), RequestField.SPEC))
        except UnreadableRecord as exc:  # one bad record fails alone: out of the index, logged
            client.zrem(keys.deadlines, request_id)
            log.error(
                "deadline: unreadable record dropped", extra={"request_id": request_id, "error": str(exc)}
            )
            continue
        outcome = as_text(lifecycle.deadline(client, request_id, keys.queue_name(base_model)))
        if outcome == "EXCEEDED":
            acted[request_id] = outcome
            record_failed(client, keys, base_model)
            log.info("deadline exceeded while queued", extra={"request_id": request_id})
    return acted


def record_failed(client: Any, keys: RedisKeys, base_model: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        job_metrics.record_job(
            pipe,
            keys,
            base_model=base_model,
            status=Status.FAILED.value,
            queue_time_s=None,
            inference_time_s=None,
        )
        pipe.execute()
