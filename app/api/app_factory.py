"""`create_app()`: wires settings, Redis, the domain services, middleware and routes together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

import anyio
import redis
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api import metrics_http
from app.api.app_state import AppState
from app.api.header_limits import HeaderLimits
from app.api.http_errors import install_error_handlers
from app.api.open_waits import OpenWaits
from app.api.request_body import BodySizeLimit
from app.api.routes import account, docs, events, generation, health, listing, playground, requests
from app.api.submission import Submitter
from app.core import api_keys
from app.core.lifecycle import Lifecycle
from app.core.models_config import ModelsConfig, load_models_config
from app.core.reaper import reap_lost_requests
from app.core.redis_clients import async_client, sync_client
from app.core.redis_keys import RedisKeys
from app.core.request_records import Records
from app.core.settings import Settings, SettingsError, load_settings
from app.core.webhooks import Deliverer

log = logging.getLogger("sdxl.api")


def build_state(settings: Settings, models: ModelsConfig) -> AppState:
    if settings.default_base_model not in models.models:
        raise SettingsError(
            f"invalid configuration: SDXL_DEFAULT_BASE_MODEL: {settings.default_base_model!r} is not in "
            f"{settings.models_file} (known: {', '.join(models.names)})"
        )
    keys = RedisKeys(settings.redis_prefix)
    aio = async_client(settings)
    sync = sync_client(settings)
    lifecycle = Lifecycle(keys, settings.result_ttl_s, settings.max_queue_time_s)
    return AppState(
        settings=settings,
        models=models,
        keys=keys,
        aio=aio,
        sync=sync,
        lifecycle=lifecycle,
        submitter=Submitter(settings, models.names, aio, sync),
        records=Records(keys, lifecycle, aio, auth_enabled=settings.auth == "enabled"),
        open_waits=OpenWaits(settings.max_open_waits),
    )


async def _background(state: AppState) -> None:
    """Creates the SDXL_API_KEYS keys once Redis answers, then reaps lost requests periodically."""
    static_keys_done = not state.settings.api_key_list
    while True:
        try:
            if not static_keys_done:
                await anyio.to_thread.run_sync(
                    api_keys.ensure_static_keys, state.sync, state.keys, state.settings.api_key_list
                )
                static_keys_done = True
            await anyio.to_thread.run_sync(
                functools.partial(
                    reap_lost_requests,
                    state.sync,
                    state.keys,
                    state.lifecycle,
                    stranded_after_s=state.settings.stranded_after_s,
                )
            )
        except redis.RedisError as exc:
            log.warning("background: Redis unavailable", extra={"error": str(exc)})
        except Exception:
            # Supervised: a bug or a bad record is logged, and the next pass comes as usual (the reaper
            # skips bad records itself; this keeps the task alive whatever else fails).
            log.exception("background pass failed; the loop goes on")
        await asyncio.sleep(state.settings.heartbeat_ttl_s / 3)


def create_app(settings: Settings | None = None, models: ModelsConfig | None = None) -> FastAPI:
    settings = settings or load_settings()
    models = models or load_models_config(settings.models_file)
    state = build_state(settings, models)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auth == "disabled":
            log.warning(
                "SDXL_AUTH=disabled: every request is accepted without a key (local development only)"
            )
        tasks = [
            asyncio.create_task(_background(state)),
            asyncio.create_task(Deliverer(settings, state.keys, state.aio).run()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.aio.aclose()
            state.sync.close()

    app = FastAPI(
        title="sdxl-img2img",
        version="0.1.0",
        description="Self-hosted, Segmind-compatible SDXL img2img API (v1 sync, v2 queue).",
        lifespan=lifespan,
        # /docs is served with its Swagger UI assets from this API (offline); ReDoc would need a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.sdxl = state
    install_error_handlers(app)
    registry = CollectorRegistry()
    # The two submission routes sit on the app's own router, first, not in an included one: FastAPI
    # (0.165) matches a route of an included router twice per request, and every included router
    # before it once; 3.5% of the instructions of a v2 submission.
    app.router.routes.extend(generation.router.routes)
    app.include_router(health.router)
    app.include_router(requests.router)
    app.include_router(events.router)
    app.include_router(account.router)
    app.include_router(listing.router)
    app.include_router(playground.router)
    app.include_router(docs.create_docs_router(app.title))
    app.include_router(
        metrics_http.create_metrics_router(registry, lambda: state.aio, state.keys, models.names)
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics_http.RequestMetricsMiddleware, registry=registry)
    app.add_middleware(HeaderLimits)  # outermost: checked before anything reads the request
    return app
