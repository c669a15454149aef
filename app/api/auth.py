"""FastAPI dependencies for authentication: the key is checked before anything else on known routes."""

from __future__ import annotations

from fastapi import Depends, Request

from app.api.app_state import AppState, get_state
from app.core import admission
from app.core.api_keys import ApiKey


async def submission_key(request: Request, state: AppState = Depends(get_state)) -> ApiKey:
    """Authenticates a submission; it counts against the key's rate limit, refused or not."""
    api_key = admission.parse_api_key(request.headers)
    return await admission.authenticate(state.aio, state.keys, state.settings, api_key)


async def reader_key(request: Request, state: AppState = Depends(get_state)) -> ApiKey:
    """Authenticates a read (status, result, cancel): not counted against the rate limit."""
    api_key = admission.parse_api_key(request.headers)
    return await admission.authenticate(state.aio, state.keys, state.settings, api_key, count_rate=False)
