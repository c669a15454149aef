"""The playground (CONTRACT 10, last item): `GET /` serves a page that drives the v2 API from the
browser, its three static files, and `GET /playground/config.json`, which tells the page the base
models this server knows and the 30 scheduler names.

No key is needed for any of it: the page holds no secret (the person types the key, which stays in
the browser's localStorage), and model names are what a 400 on a wrong `base_model` lists anyway.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from app.api.app_state import AppState, get_state
from app.core.errors import NotFound
from app.core.job_spec import OUTPUT_FORMATS
from app.core.scheduler_names import DEFAULT_SCHEDULER, SCHEDULER_NAMES

router = APIRouter(tags=["playground"])

# An allow-list rather than a directory mount: nothing but these three files is ever served.
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
# Everything the page loads and calls is its own origin; output and preview images may come from
# SDXL_PUBLIC_URL or the image URL a person typed, hence http(s) for img-src only.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: http: https:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _static(file_name: str) -> Response:
    if file_name not in _FILES:
        raise NotFound(f"Playground file {file_name[:80]} not found")
    data = resources.files("app.api").joinpath("static", "playground", file_name).read_bytes()
    return Response(data, media_type=_FILES[file_name], headers=_HEADERS)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return _static("index.html")


@router.get("/playground/config.json", summary="What the playground offers: base models and schedulers")
async def config(state: AppState = Depends(get_state)) -> JSONResponse:
    models = [{"name": name, "description": entry.description} for name, entry in state.models.models.items()]
    return JSONResponse(
        {
            "models": models,
            "default_base_model": state.settings.default_base_model,
            "schedulers": list(SCHEDULER_NAMES),
            "default_scheduler": DEFAULT_SCHEDULER,
            "output_formats": list(OUTPUT_FORMATS),
        },
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/playground/{file_name}", include_in_schema=False)
async def static_file(file_name: str) -> Response:
    return _static(file_name)
