"""`/docs` without a CDN: FastAPI's Swagger UI page with its script, stylesheet and icon served by
this API from the `swagger-ui-bundle` package, so that the docs work on a machine that reaches
nothing outside (FastAPI's default page loads them from a CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS_PATH = "/docs/assets"
# Only the files the page references (never a directory listing of the package).
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _bundle_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


def create_docs_router(title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )

    @router.get(ASSETS_PATH + "/{name}")
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404)
        # Cached a day: the files change only with the package's version.
        return FileResponse(
            _bundle_dir() / name, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"}
        )

    return router
