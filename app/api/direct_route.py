"""`DirectRoute`: a FastAPI route whose endpoint reads the request and returns the response itself.

FastAPI still matches it, documents it (OpenAPI, from the endpoint's signature and the route's
`openapi_extra`) and turns its typed errors into responses; only its request handler is skipped:
dependency solving, parameter validation and response serialisation, which the submission routes
do not use (they read their body themselves, app/api/request_body.py) and which were 6.5% of the
instructions of a v2 submission (cachegrind). Its endpoint is called as `endpoint(request, **path_params)`:
path parameters arrive as the strings the path matched.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DirectRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            return await endpoint(request, **request.path_params)

        return handle
