"""The answer bodies of CONTRACT 4 and 5, built from a request record: one result shape for v1 and v2."""

from __future__ import annotations

import base64
from typing import Any

from app.core.job_spec import Status
from app.core.redis_keys import RequestField
from app.core.request_records import RequestRecord


def output_url(base_url: str, request_id: str, file_name: str) -> str:
    return f"{base_url}/v2/requests/{request_id}/outputs/{file_name}"


def status_body(record: RequestRecord, queue_position: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": record.request_id,
        "status": record.status.value,
        "metrics": record.metrics(),
    }
    if record.status is Status.QUEUED and queue_position is not None:
        body["queue_position"] = queue_position
    if record.status is Status.PROCESSING:
        body["progress"] = {
            "step": int(record.fields.get(RequestField.STEP) or 0),
            "total": int(record.fields.get(RequestField.TOTAL) or 0),
        }
    if record.status is Status.FAILED:
        body["error"] = record.error
    return body


def result_body(record: RequestRecord, base_url: str, outputs: list[bytes] | None) -> dict[str, Any]:
    """`outputs` holds the image bytes when the request asked for base64, else None."""
    body: dict[str, Any] = {
        "request_id": record.request_id,
        "status": record.status.value,
        "error": record.error if record.status is Status.FAILED else None,
        "output": None,
        "images": [],
        "seeds": record.spec.seeds(),
        "metrics": record.metrics(),
    }
    result = record.result
    if record.status is not Status.COMPLETED or result is None:
        return body
    images = [
        {**image, "url": output_url(base_url, record.request_id, image["file_name"])}
        for image in result["images"]
    ]
    if outputs is not None:
        values: list[str] = [base64.b64encode(data).decode() for data in outputs]
    else:
        values = [image["url"] for image in images]
    body.update(
        output=values[0] if len(values) == 1 else values,
        images=images,
        seeds=result["seeds"],
    )
    return body
