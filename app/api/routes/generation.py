"""`POST /v1/sdxl-img2img` (synchronous) and `POST /v2/sdxl-img2img` (queued): one submission path.

v1 is the v2 job awaited with a deadline, not a second code path (CONTRACT 4)."""

from __future__ import annotations

import base64
import logging
import time

import anyio
import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.app_state import AppState, app_state
from app.api.auth import submission_key
from app.api.direct_route import DirectRoute
from app.api.idempotent_submission import submit_once
from app.api.request_body import parse_body
from app.api.submission import Submitted
from app.core import admission, deadlines, idempotency, worker_registry
from app.core.api_keys import ApiKey
from app.core.errors import (
    GatewayTimeout,
    InvalidInput,
    NotFound,
    NoWorker,
    RequestFailed,
    ServiceError,
    Unavailable,
)
from app.core.job_spec import CONTENT_TYPES, SLUG, Status
from app.core.redis_clients import BLOCKING_SLICE_S
from app.core.request_model import Img2ImgRequest, validate_body
from app.core.request_options import RequestOptions

# Direct routes: the two submissions read their own body and build their own answers.
router = APIRouter(tags=["generation"], route_class=DirectRoute)
log = logging.getLogger("sdxl.api")

_body_schema = Img2ImgRequest.model_json_schema()
BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _body_schema},
            "multipart/form-data": {"schema": _body_schema},
        },
    }
}
ERRORS = {
    code: {"description": text, "content": {"application/json": {"example": {"error": text}}}}
    for code, text in {
        400: "invalid parameters, body or image",
        401: "missing or invalid key",
        403: "the key may not use this base model",
        404: "unknown model slug",
        406: "not enough credits",
        409: "a submission with this Idempotency-Key is still under way",
        413: "body too large",
        422: "Idempotency-Key was used with a different request body",
        429: "rate limit or queue full",
        502: "Service temporarily unavailable",
    }.items()
}


def public_base_url(request: Request, state: AppState) -> str:
    return (state.settings.public_url or str(request.base_url)).rstrip("/")


# Segmind's older slug for the same model, still called by much client code (CONTRACT 4 and 9).
SLUG_ALIASES = frozenset({SLUG, "sdxl1.0-img2img"})


def check_slug(slug: str) -> None:
    if slug not in SLUG_ALIASES:
        raise NotFound("Model not found")


def accounting_headers(submitted: Submitted) -> dict[str, str]:
    cost = str(submitted.spec.cost)
    headers = {"x-request-id": submitted.spec.request_id, "x-cost": cost, "x-credits-consumed": cost}
    if submitted.remaining_credits is not None:
        headers["x-remaining-credits"] = str(submitted.remaining_credits)
    if submitted.replayed:  # Stripe's name: the answer of an earlier submission, charged once
        headers["idempotent-replayed"] = "true"
    if submitted.ignored_fields:
        headers["x-ignored-fields"] = ",".join(submitted.ignored_fields)
    return headers


async def submit(request: Request, state: AppState, *, needs_worker: bool = False) -> Submitted:
    """Validates, charges and queues one request. `needs_worker` (v1): a request for a base model
    that no live worker serves is refused with a 503 before anything is charged, rather than
    waiting for the sync timeout (v2 queues it: a worker may come, and its status says so)."""
    key: ApiKey = await submission_key(request, state)
    idempotency_key = idempotency.parse_header(request.headers)  # a bad header: 400 before the body
    cancel_after_s = deadlines.parse_cancel_after(request.headers)
    data = await parse_body(request, state.settings.max_body_bytes)
    params = validate_body(
        data, model_names=state.models.names, default_base_model=state.settings.default_base_model
    )
    admission.check_model_allowed(key, params.base_model)
    if needs_worker:
        serving = await worker_registry.live_workers_serving(state.aio, state.keys, params.base_model)
        if not serving:
            raise NoWorker(params.base_model)
    base_url = public_base_url(request, state)

    async def submit_new(options: RequestOptions) -> Submitted:
        image = await state.submitter.prepare(params)
        return await state.submitter.submit(key, params, image, base_url=base_url, options=options)

    options = RequestOptions(cancel_after_s=cancel_after_s)
    if idempotency_key is None:
        return await submit_new(options)
    digest = idempotency.body_digest(data)
    return await submit_once(state, key, idempotency_key, digest, submit_new, options)


@router.post("/v2/{slug}", openapi_extra=BODY_DOC, responses=ERRORS, summary="Queue an img2img request")
async def submit_v2(request: Request, slug: str) -> JSONResponse:
    check_slug(slug)
    state = app_state(request)
    submitted = await submit(request, state)
    base = public_base_url(request, state)
    request_id = submitted.spec.request_id
    return JSONResponse(
        {
            "request_id": request_id,
            "status": Status.QUEUED.value,
            "status_url": f"{base}/v2/requests/{request_id}/status",
            "response_url": f"{base}/v2/requests/{request_id}",
        },
        headers=accounting_headers(submitted),
    )


# While Redis is unreachable, a v1 waiter tries again this often (its request lives on in Redis).
REDIS_RETRY_S = 0.25


async def wait_for_end(state: AppState, request_id: str, timeout_s: float) -> bool:
    """Blocks on the request's done list (the worker pushes to it at the end): no sleep-polling.

    A Redis outage shorter than the wait is waited through: the done list is kept for the result
    TTL, so an end that happened meanwhile is still seen once Redis answers again."""
    deadline = time.monotonic() + timeout_s
    done_key = state.keys.done(request_id)
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            # BLMOVE onto the same list: the end mark stays, so every waiter on the request (its
            # v1 and Idempotency-Key duplicates of it) wakes, not only the first.
            if await state.aio.blmove(done_key, done_key, min(BLOCKING_SLICE_S, remaining)):
                return True
        except redis.RedisError as exc:
            log.warning("v1 wait: Redis unavailable, waiting on", extra={"error": str(exc)})
            await anyio.sleep(min(REDIS_RETRY_S, max(0.0, deadline - time.monotonic())))
    return False


@router.post(
    "/v1/{slug}",
    openapi_extra=BODY_DOC,
    responses={
        **ERRORS,
        200: {"content": {"image/jpeg": {}, "application/json": {}}},
        503: {
            "description": "no live worker serves the base model (nothing charged; Retry-After)",
            "content": {"application/json": {"example": {"error": "no worker is serving base model 'tiny'"}}},
        },
        504: {"description": "timeout"},
    },
    summary="Run an img2img request and wait for the image",
)
async def run_v1(request: Request, slug: str) -> Response:
    check_slug(slug)
    state = app_state(request)
    submitted = await submit(request, state, needs_worker=True)
    try:
        return await answer_v1(state, submitted)
    except ServiceError as exc:
        # Once a request exists, every answer names it: the client can fetch or cancel it.
        exc.headers.setdefault("x-request-id", submitted.spec.request_id)
        raise
    except redis.RedisError as exc:
        log.error("v1: Redis unavailable", extra={"error": str(exc)})
        raise Unavailable(headers={"x-request-id": submitted.spec.request_id}) from None


async def answer_v1(state: AppState, submitted: Submitted) -> Response:
    spec = submitted.spec
    if not await wait_for_end(state, spec.request_id, state.settings.sync_timeout_s):
        record = await state.records.get(spec.request_id, submitted.key)
        ended = record.status.is_terminal()
        if not ended and not submitted.replayed:
            # (A duplicate's wait ending leaves the first submission's request alone.)
            # A cancel accepted now is a FAILED request, refunded, even if the worker is past its
            # last step (finish.lua refuses to complete it); "FINISHED" means it ended just now.
            ended = await state.records.cancel_if_running(record)
        if not ended:
            raise GatewayTimeout(
                f"request {spec.request_id} did not finish within {state.settings.sync_timeout_s:g} s"
            )
    # The outputs' names follow from the spec (JobSpec.file_name): read with the record, one round trip.
    wanted = [spec.file_name(i) for i in range(spec.samples if spec.base64 else 1)]
    record, outputs = await state.records.get_with_outputs(spec.request_id, submitted.key, wanted)
    if record.status is Status.FAILED:
        if record.error_status == 400:
            raise InvalidInput(record.error)
        if record.error_status == 504:  # its Cancel-After passed: the client's own time limit
            raise GatewayTimeout(record.error)
        if record.error_status == 422:  # content blocked (CONTRACT 3c)
            raise RequestFailed(record.error)
        raise ServiceError(record.error or "request failed")
    result = record.result or {}
    for name, data in zip(wanted, outputs, strict=True):
        if data is None:  # expired between the end and now (the worker names them by the spec too)
            raise NotFound(f"Output {name} of request {spec.request_id} not found")
    headers = {
        **accounting_headers(submitted),
        "x-seed-value": str(result["seeds"][0]),
        "x-generation-time": f"{result['inference_time']:.4f}",
    }
    if not spec.base64:
        return Response(outputs[0], media_type=CONTENT_TYPES[spec.output_format], headers=headers)
    encoded = [base64.b64encode(data).decode() for data in outputs]
    return JSONResponse({"image": encoded[0], "images": encoded, "seeds": result["seeds"]}, headers=headers)
