"""The status and result bodies as the v2 routes answer them, read from Redis: one place for the
status route, its `?wait=` form and the event stream (app/api/routes/events.py)."""

from __future__ import annotations

from typing import Any

from app.api.app_state import AppState
from app.core import eta
from app.core.answer_bodies import result_body, status_body
from app.core.job_spec import Status
from app.core.request_records import RequestRecord


async def status_view(state: AppState, record: RequestRecord) -> dict[str, Any]:
    position = await state.records.queue_position(record) if record.status is Status.QUEUED else None
    body = status_body(record, position)
    if not record.status.is_terminal():
        # eta_s: null when no live worker serves the model (then `workers` says 0, CONTRACT 4).
        body["eta_s"], body["workers"] = await eta.estimate(state.aio, state.keys, record, position)
    return body


async def result_view(state: AppState, record: RequestRecord, base_url: str) -> dict[str, Any]:
    outputs = None
    result = record.result
    if record.status is Status.COMPLETED and record.spec.base64 and result:
        outputs = [
            await state.records.output(record.request_id, image["file_name"]) for image in result["images"]
        ]
    return result_body(record, base_url, outputs)


def http_code(status: Status) -> int:
    # [compat] the SDK treats any body whose status is FAILED as terminal, whatever the HTTP code;
    # Segmind answers FAILED with 422 on both status and result.
    return 422 if status is Status.FAILED else 200
