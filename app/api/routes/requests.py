"""The v2 queue reads: status, result, outputs, and DELETE (cancel)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from app.api.app_state import AppState, get_state
from app.api.auth import reader_key
from app.api.routes.generation import public_base_url
from app.api.status_view import http_code, result_view, status_view
from app.core import status_events
from app.core.api_keys import ApiKey
from app.core.errors import NotFound
from app.core.job_spec import CONTENT_TYPES, FILE_EXTENSIONS
from app.core.request_records import not_found

router = APIRouter(prefix="/v2/requests", tags=["requests"])

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_EXTENSION_TYPES = {ext: CONTENT_TYPES[fmt] for fmt, ext in FILE_EXTENSIONS.items()}


def check_id(request_id: str) -> str:
    if not _UUID.match(request_id):
        raise not_found(request_id[:64])
    return request_id


@router.get("/{request_id}/status", summary="Status, queue position and progress of a request")
async def get_status(
    request_id: str,
    wait: str | None = Query(
        None, description="seconds (0 to 60): answer as soon as the status or progress changes, or then"
    ),
    state: AppState = Depends(get_state),
    key: ApiKey = Depends(reader_key),
) -> JSONResponse:
    check_id(request_id)
    wait_s = status_events.parse_wait(wait)
    # The hash and its stream's last entry id in one read: any change after that id wakes the wait.
    fields, last_id = await status_events.snapshot(state.aio, state.keys, request_id)
    record = state.records.from_fields(request_id, fields, key)
    # Past SDXL_MAX_OPEN_WAITS open waits, the answer comes at once, as with ?wait=0.
    if wait_s > 0 and not record.status.is_terminal() and state.open_waits.try_open():
        try:
            changed = await status_events.read_after(
                state.aio, state.keys, request_id, last_id, wait_s, count=1
            )
        finally:
            state.open_waits.close()
        if changed:
            record = await state.records.get(request_id, key)
    return JSONResponse(await status_view(state, record), status_code=http_code(record.status))


@router.get("/{request_id}", summary="The result of a request")
async def get_result(
    request_id: str,
    request: Request,
    state: AppState = Depends(get_state),
    key: ApiKey = Depends(reader_key),
) -> JSONResponse:
    record = await state.records.get(check_id(request_id), key)
    body = await result_view(state, record, public_base_url(request, state))
    return JSONResponse(body, status_code=http_code(record.status))


@router.delete("/{request_id}", status_code=202, summary="Cancel a request")
async def cancel(
    request_id: str, state: AppState = Depends(get_state), key: ApiKey = Depends(reader_key)
) -> JSONResponse:
    record = await state.records.get(check_id(request_id), key)
    status = await state.records.cancel(record)
    return JSONResponse({"request_id": request_id, "status": status.value}, status_code=202)


@router.get(
    "/{request_id}/outputs/{file_name}",
    summary="An output image (no key needed: the URL carries the unguessable request id)",
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}}},
)
async def get_output(request_id: str, file_name: str, state: AppState = Depends(get_state)) -> Response:
    check_id(request_id)
    extension = file_name.rsplit(".", 1)[-1]
    if not file_name.startswith(f"{request_id}-") or extension not in _EXTENSION_TYPES:
        raise NotFound(f"Output {file_name[:80]} of request {request_id} not found")
    data = await state.records.output(request_id, file_name)
    return Response(
        data, media_type=_EXTENSION_TYPES[extension], headers={"Cache-Control": "private, max-age=3600"}
    )
