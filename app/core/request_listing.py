"""`GET /v2/requests` (CONTRACT 10, "Listing"): a key's own requests, newest first, a page at a time.

The index is a sorted set per API key (`RedisKeys.key_requests`, written with each request by the
submission's enqueue). A page is read newest first from a cursor (the submission time of the last
request of the previous page, exclusive); ids whose record has expired are skipped and dropped from
the index. A `status` filter reads on until the page is full, at most `MAX_SCANNED` entries per call:
past that, the page comes back short with a cursor to read on from.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from app.core.api_keys import ApiKey
from app.core.errors import InvalidInput
from app.core.job_spec import Status
from app.core.lifecycle import decode_hash
from app.core.redis_keys import RedisKeys, RequestField
from app.core.request_records import Records, RequestRecord

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
MAX_SCANNED = 1000
_BATCH = 100


@dataclass(frozen=True)
class Page:
    records: list[RequestRecord]
    next_cursor: str | None


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer between 1 and {MAX_LIMIT}, got {value[:20]!r}")
    return limit


def parse_status(value: str | None) -> Status | None:
    if value is None or value == "":
        return None
    try:
        return Status(value.upper())
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise InvalidInput(f"status must be one of {allowed}; got {value[:20]!r}") from None


def encode_cursor(score: float) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": score}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> float | None:
    if not cursor:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(data["before"])
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this server gave (use next_cursor as it came)") from None


async def list_requests(
    aio: Any,
    keys: RedisKeys,
    records: Records,
    key: ApiKey,
    *,
    limit: int,
    status: Status | None,
    before: float | None,
) -> Page:
    index = keys.key_requests(key.id)
    found: list[RequestRecord] = []
    upper = f"({before!r}" if before is not None else "+inf"
    scanned = 0
    while len(found) < limit and scanned < MAX_SCANNED:
        batch = await aio.zrevrangebyscore(index, upper, "-inf", start=0, num=_BATCH, withscores=True)
        if not batch:
            return Page(found, None)
        async with aio.pipeline(transaction=False) as pipe:
            for raw_id, _ in batch:
                pipe.hgetall(keys.request(raw_id.decode()))
            hashes = await pipe.execute()
        gone = []
        for (raw_id, score), raw in zip(batch, hashes, strict=True):
            scanned += 1
            upper = f"({score!r}"
            fields = decode_hash(raw)
            if RequestField.STATUS not in fields:
                gone.append(raw_id)
                continue
            record = records.from_fields(raw_id.decode(), fields, key)
            if status is None or record.status is status:
                found.append(record)
                if len(found) == limit:
                    break
        if gone:  # expired records: their index entries go too
            await aio.zrem(index, *gone)
    if upper == "+inf" or not await aio.zrevrangebyscore(index, upper, "-inf", start=0, num=1):
        return Page(found, None)  # nothing older: the last page
    return Page(found, encode_cursor(float(upper[1:])))
