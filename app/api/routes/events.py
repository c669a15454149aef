"""`GET /v2/requests/{id}/events`: the request's live status as Server-Sent Events (CONTRACT 10).

A new connection gets the current status at once (event `status`), then every change as it happens:
`status` at each change of status, `progress` at each denoising step, and last `result` with the
result body (the same as `GET /v2/requests/{id}`), after which the stream ends. Each event carries
the id of its entry in the request's Redis Stream (app/core/status_events.py), so a client that
reconnects with `Last-Event-ID` gets what it missed and nothing twice; one that already had the
result is answered 204, which tells an EventSource to stop reconnecting.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event

from app.api.app_state import AppState, get_state
from app.api.auth import reader_key
from app.api.routes.generation import public_base_url
from app.api.routes.requests import check_id
from app.api.status_view import result_view, status_view
from app.core import status_events
from app.core.api_keys import ApiKey
from app.core.errors import NotFound
from app.core.job_spec import Status
from app.core.redis_keys import RequestField
from app.core.request_records import RequestRecord

router = APIRouter(prefix="/v2/requests", tags=["requests"])

# A comment line this often while nothing happens, so that proxies keep the connection open.
KEEPALIVE_S = 15.0
# How long an EventSource waits before it reconnects after a dropped connection.
RETRY_MS = 1000
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _event(kind: str, body: dict[str, Any], event_id: str | None = None) -> bytes:
    return format_sse_event(data_str=json.dumps(body, separators=(",", ":")), event=kind, id=event_id)


@router.get(
    "/{request_id}/events",
    summary="Live status of a request, as Server-Sent Events (status, progress, then result)",
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "Last-Event-ID names the result event: nothing more will come"},
    },
)
async def events(
    request_id: str,
    request: Request,
    last_event_id: str | None = Header(None, description="resume after this event id"),
    state: AppState = Depends(get_state),
    key: ApiKey = Depends(reader_key),
) -> Response:
    check_id(request_id)
    fields, last_id = await status_events.snapshot(state.aio, state.keys, request_id)
    record = state.records.from_fields(request_id, fields, key)
    base_url = public_base_url(request, state)
    if last_event_id is None:
        first = await _current(state, record, last_id, base_url)
        after = last_id
    else:
        after = status_events.parse_event_id(last_event_id)
        first = [format_sse_event(retry=RETRY_MS)]
        if record.status.is_terminal():
            # The result entry is the stream's last: nothing after the client's id means it had it.
            pending = await status_events.read_after(state.aio, state.keys, request_id, after, 0, count=1)
            if not pending:
                return Response(status_code=204, headers=_HEADERS)
    ended = record.status.is_terminal() and last_event_id is None
    if ended:
        return EventSourceResponse(_chain(first, _none()), headers=_HEADERS)
    state.open_waits.refuse_when_full()  # 503 past SDXL_MAX_OPEN_WAITS (app/api/open_waits.py)
    stream = _follow(state, key, record, after, base_url)
    return EventSourceResponse(_chain(first, stream), headers=_HEADERS)


async def _current(state: AppState, record: RequestRecord, last_id: str, base_url: str) -> list[bytes]:
    """What a new connection gets first: the status now (and the result, when it has ended)."""
    opening = format_sse_event(retry=RETRY_MS)
    body = await status_view(state, record)
    if not record.status.is_terminal():
        return [opening, _event(status_events.STATUS, body, last_id)]
    result = await result_view(state, record, base_url)
    result_id = last_id if last_id != status_events.START else None
    return [opening, _event(status_events.STATUS, body), _event(status_events.RESULT, result, result_id)]


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


async def _none() -> AsyncIterator[bytes]:
    return
    yield  # an empty async generator


async def _follow(
    state: AppState, key: ApiKey, record: RequestRecord, after: str, base_url: str
) -> AsyncIterator[bytes]:
    """The changes after `after`, as they happen, until the result. A Redis error or the request's
    expiry ends the stream; the client reconnects with its last event id."""
    request_id = record.request_id
    started_at = record.timestamp(RequestField.STARTED_AT)
    if not state.open_waits.try_open():
        return  # filled up since the check: the stream ends, and the client reconnects later
    try:
        while True:
            entries = await status_events.read_after(state.aio, state.keys, request_id, after, KEEPALIVE_S)
            if not entries:
                yield KEEPALIVE_COMMENT
                continue
            for entry in entries:
                after = entry.id
                if entry.kind == status_events.RESULT:
                    record = await state.records.get(request_id, key)
                    yield _event(entry.kind, await result_view(state, record, base_url), entry.id)
                    return
                if entry.kind == status_events.STATUS:
                    record = await state.records.get(request_id, key)
                    started_at = record.timestamp(RequestField.STARTED_AT)
                    yield _event(entry.kind, await _status_of(state, record, entry), entry.id)
                elif entry.kind == status_events.PROGRESS:
                    yield _event(entry.kind, _progress(request_id, entry, started_at), entry.id)
    except (redis.RedisError, NotFound):
        return
    finally:
        state.open_waits.close()  # also when the client went away (the generator is closed)


async def _status_of(state: AppState, record: RequestRecord, entry: status_events.Entry) -> dict[str, Any]:
    """The status body when the record still has the entry's status; when it has moved on (the next
    entries tell how), the entry's status alone, so that events never run ahead of their order."""
    if record.status.value == entry.fields.get("status"):
        return await status_view(state, record)
    return {"request_id": record.request_id, "status": entry.fields.get("status")}


def _progress(request_id: str, entry: status_events.Entry, started_at: float | None) -> dict[str, Any]:
    step, total = int(entry.fields.get("step", 0)), int(entry.fields.get("total", 0))
    body: dict[str, Any] = {
        "request_id": request_id,
        "status": Status.PROCESSING.value,
        "progress": {"step": step, "total": total},
    }
    if started_at and step > 0:
        # The rest of the steps at the pace of those done so far (app/core/eta.py does the same).
        body["eta_s"] = round((total - step) * (time.time() - started_at) / step, 2)
    return body
