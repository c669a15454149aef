"""The v2 queue reads: status, result, outputs, and DELETE (cancel)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app.api.app_state import AppState, get_state
from app.api.auth import reader_key
from app.api.routes.generation import public_base_url
from app.core.answer_bodies import result_body, status_body
from app.core.api_keys import ApiKey
from app.core.errors import NotFound
from app.core.job_spec import CONTENT_TYPES, FILE_EXTENSIONS, Status
from app.core.request_records import not_found

router = APIRouter(prefix="/v2/requests", tags=["requests"])

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_EXTENSION_TYPES = {ext: CONTENT_TYPES[fmt] for fmt, ext in FILE_EXTENSIONS.items()}


def check_id(request_id: str) -> str:
    if not _UUID.match(request_id):
        raise not_found(request_id[:64])
    return request_id


# [compat] the SDK treats any body whose status is FAILED as terminal, whatever the HTTP code;
# Segmind answers FAILED with 422 on both status and result.
def _code(status: Status) -> int:
    return 422 if status is Status.FAILED else 200


@router.get("/{request_id}/status", summary="Status, queue position and progress of a request")
async def get_status(
    request_id: str, state: AppState = Depends(get_state), key: ApiKey = Depends(reader_key)
) -> JSONResponse:
    record = await state.records.get(check_id(request_id), key)
    position = await state.records.queue_position(record) if record.status is Status.QUEUED else None
    return JSONResponse(status_body(record, position), status_code=_code(record.status))


@router.get("/{request_id}", summary="The result of a request")
async def get_result(
    request_id: str,
    request: Request,
    state: AppState = Depends(get_state),
    key: ApiKey = Depends(reader_key),
) -> JSONResponse:
    record = await state.records.get(check_id(request_id), key)
    outputs = None
    result = record.result
    if record.status is Status.COMPLETED and record.spec.base64 and result:
        outputs = [await state.records.output(request_id, image["file_name"]) for image in result["images"]]
    body = result_body(record, public_base_url(request, state), outputs)
    return JSONResponse(body, status_code=_code(record.status))


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
