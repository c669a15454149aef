"""`GET /v2/requests`: the calling key's own requests, newest first, with a cursor (CONTRACT 10)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from app.api.app_state import AppState, get_state
from app.api.auth import reader_key
from app.api.status_view import status_view
from app.core import request_listing
from app.core.api_keys import ApiKey
from app.core.redis_keys import RequestField

router = APIRouter(tags=["requests"])


@router.get("/v2/requests", summary="The key's own requests, newest first")
async def list_requests(
    status: str | None = Query(None, description="QUEUED, PROCESSING, COMPLETED or FAILED"),
    limit: str | None = Query(None, description="1 to 100 (default 20)"),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    state: AppState = Depends(get_state),
    key: ApiKey = Depends(reader_key),
) -> JSONResponse:
    # Parsed here rather than by FastAPI's types: every bad value is one sentence naming it.
    page = await request_listing.list_requests(
        state.aio,
        state.keys,
        state.records,
        key,
        limit=request_listing.parse_limit(limit),
        status=request_listing.parse_status(status),
        before=request_listing.decode_cursor(cursor),
    )
    bodies = []
    for record in page.records:
        body = await status_view(state, record)
        created = record.timestamp(RequestField.CREATED_AT)
        if created is not None:
            body["created_at"] = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        bodies.append(body)
    return JSONResponse({"requests": bodies, "next_cursor": page.next_cursor})
