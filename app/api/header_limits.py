"""Request headers bounded in count and size (issue 10 item 15): beyond them, 431 in JSON.

The HTTP parser (httptools) has already read the headers when this runs; the bound keeps one
request's headers from costing the app more than a browser's ever would (nginx refuses at 8 KB
per line, 32 KB in all), and says so in the contract's error shape.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 32 * 1024


class HeaderLimits:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) + 4 for name, value in headers)
            if len(headers) > MAX_HEADER_COUNT or size > MAX_HEADER_BYTES:
                await _refuse(send, len(headers), size)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, count: int, size: int) -> None:
    message = (
        f"request headers too large: {count} headers, {size} bytes "
        f"(at most {MAX_HEADER_COUNT} headers and {MAX_HEADER_BYTES} bytes)"
    )
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
