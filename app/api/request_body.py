"""Request bodies: a size limit enforced while reading (413), then JSON or multipart form parsing,
where every malformed body is a 400 with a JSON error."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import InvalidInput, PayloadTooLarge


class BodySizeLimit:
    """Pure ASGI middleware: refuses a declared Content-Length over the limit at once, and stops
    reading a body (chunked or lying about its length) as soon as it passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"request body larger than {self.max_bytes} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                from app.api.http_errors import error_response

                await error_response(413, too_large.message)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large
            return message

        await self.app(scope, limited_receive, send)


async def parse_body(request: Request, max_bytes: int) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _parse_form(request, max_bytes)
    if content_type not in ("", "application/json", "text/json") and not content_type.endswith("+json"):
        raise InvalidInput(
            f"unsupported Content-Type {content_type!r}: send application/json or multipart/form-data"
        )
    raw = await request.body()
    if not raw.strip():
        raise InvalidInput("request body is empty: send a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        # `[[[[...` a few thousand deep exhausts the parser's stack: hostile, not a server fault.
        raise InvalidInput("request body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    return data


async def _parse_form(request: Request, max_bytes: int) -> dict[str, Any]:
    try:
        form = await request.form(max_files=1, max_fields=64, max_part_size=max_bytes)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # starlette raises its own HTTPException/MultiPartException types
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        raise InvalidInput(f"malformed form body: {detail}") from None
    data: dict[str, Any] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in ("image", "init_image"):  # init_image: the spelling of clients in the wild
                raise InvalidInput(f"only the image field may be a file upload, got a file for {name!r}")
            data[name] = await value.read()
        else:
            data[name] = value
    return data
