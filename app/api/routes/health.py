"""Operator endpoints without a key: /healthz (the process answers) and /readyz (Redis answers and
at least one worker is alive, read from the registry of live workers: no keyspace scan)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.api.app_state import AppState, get_state
from app.core import worker_registry

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis answers and at least one worker is alive")
async def readyz(state: AppState = Depends(get_state)) -> JSONResponse:
    try:
        await state.aio.ping()
        workers = len(await worker_registry.live_workers(state.aio, state.keys))
    except redis.RedisError:
        return JSONResponse({"status": "unavailable", "error": "Redis does not answer"}, status_code=503)
    if workers == 0:
        return JSONResponse(
            {"status": "unavailable", "error": "no worker is alive", "workers": 0}, status_code=503
        )
    return JSONResponse({"status": "ok", "workers": workers})
