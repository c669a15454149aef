"""Reading a request back: status, progress, queue position, result, outputs; and cancelling it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.core.api_keys import ApiKey
from app.core.errors import Conflict, NotFound
from app.core.job_spec import JobSpec, Status
from app.core.lifecycle import Lifecycle, as_text, decode_hash
from app.core.redis_keys import RedisKeys, RequestField


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    status: Status
    spec: JobSpec
    fields: dict[str, str]

    @property
    def error(self) -> str | None:
        return self.fields.get(RequestField.ERROR)

    @property
    def error_status(self) -> int:
        return int(self.fields.get(RequestField.ERROR_STATUS) or 500)

    @property
    def result(self) -> dict[str, Any] | None:
        raw = self.fields.get(RequestField.RESULT)
        return json.loads(raw) if raw else None

    def timestamp(self, name: str) -> float | None:
        value = self.fields.get(name)
        return float(value) if value else None

    def metrics(self) -> dict[str, float]:
        created = self.timestamp(RequestField.CREATED_AT)
        started = self.timestamp(RequestField.STARTED_AT)
        finished = self.timestamp(RequestField.FINISHED_AT)
        metrics: dict[str, float] = {}
        if created and started:
            metrics["queue_time"] = round(started - created, 4)
        result = self.result
        if result and "inference_time" in result:
            metrics["inference_time"] = round(result["inference_time"], 4)
        if created and finished:
            metrics["total_time"] = round(finished - created, 4)
        return metrics


def not_found(request_id: str) -> NotFound:
    return NotFound(f"Request {request_id} not found")


class Records:
    def __init__(self, keys: RedisKeys, lifecycle: Lifecycle, aio: Any, auth_enabled: bool) -> None:
        self.keys = keys
        self.lifecycle = lifecycle
        self.aio = aio
        self.auth_enabled = auth_enabled

    async def get(self, request_id: str, key: ApiKey) -> RequestRecord:
        """The record, if it exists and belongs to `key`; any other id is 404, exactly as an unknown one."""
        raw = await self.aio.hgetall(self.keys.request(request_id))
        return self.from_fields(request_id, decode_hash(raw), key)

    async def get_with_outputs(
        self, request_id: str, key: ApiKey, file_names: list[str]
    ) -> tuple[RequestRecord, list[bytes | None]]:
        """`get` and the named outputs (None where there is none) in one round trip: what a v1
        answer reads once its request has ended."""
        async with self.aio.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.request(request_id))
            for name in file_names:
                pipe.get(self.keys.output(request_id, name))
            raw, *outputs = await pipe.execute()
        return self.from_fields(request_id, decode_hash(raw), key), outputs

    def from_fields(self, request_id: str, fields: dict[str, str], key: ApiKey) -> RequestRecord:
        """`get` on a hash already read (e.g. with its event stream, app/core/status_events.py)."""
        if RequestField.STATUS not in fields or RequestField.SPEC not in fields:
            raise not_found(request_id)
        if self.auth_enabled and fields.get(RequestField.KEY_ID) != key.id:
            raise not_found(request_id)
        return RequestRecord(
            request_id,
            Status(fields[RequestField.STATUS]),
            JobSpec.from_json(fields[RequestField.SPEC]),
            fields,
        )

    async def queue_position(self, record: RequestRecord) -> int | None:
        """The number of requests that will start before this one (RQ pops from the left)."""
        position = await self.aio.lpos(self.keys.rq_queue_key(record.spec.base_model), record.request_id)
        return int(position) if position is not None else None

    async def output(self, request_id: str, file_name: str) -> bytes:
        data = await self.aio.get(self.keys.output(request_id, file_name))
        if data is None:
            raise NotFound(f"Output {file_name} of request {request_id} not found")
        return data

    async def cancel_if_running(self, record: RequestRecord) -> bool:
        """Cancels a request not ended yet (the v1 timeout); True when it had ended meanwhile."""
        outcome = as_text(
            await self.lifecycle.cancel(
                self.aio, record.request_id, self.keys.queue_name(record.spec.base_model)
            )
        )
        return outcome == "FINISHED"

    async def cancel(self, record: RequestRecord) -> Status:
        outcome = await self.lifecycle.cancel(
            self.aio, record.request_id, self.keys.queue_name(record.spec.base_model)
        )
        outcome = as_text(outcome)
        if outcome == "MISSING":
            raise not_found(record.request_id)
        if outcome == "FINISHED":
            raise Conflict("request already finished")
        if outcome == "CANCELLED":  # refunded by the same Lua step (cancel.lua)
            return Status.FAILED
        return Status.PROCESSING  # stops at the worker's next denoising step
