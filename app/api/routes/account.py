"""`GET /v1/credits`: the calling key's balance and limits (CONTRACT 10, "Account").

The path is the one a third-party Segmind tool calls to show a balance; the body is this server's."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.auth import reader_key
from app.core.api_keys import ApiKey

router = APIRouter(tags=["account"])


def account_body(key: ApiKey) -> dict:
    return {
        "credits": {"remaining": key.credits, "used": key.used},  # remaining None: unlimited
        "name": key.name,
        "rpm": key.rpm,
        "models": list(key.models) if key.models is not None else None,
        "concurrency": key.concurrency,
    }


@router.get("/v1/credits", summary="The key's credits (remaining, used) and limits")
async def credits(key: ApiKey = Depends(reader_key)) -> dict:
    return account_body(key)
