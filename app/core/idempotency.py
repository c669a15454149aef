"""`Idempotency-Key` (CONTRACT 10): a submission retried with the same key and body answers the first
request and is charged nothing more, also when the duplicates arrive at the same instant.

The decision is one Lua step on a record per (API key, Idempotency-Key) holding the request id and a
digest of the body (app/core/lua/idempotency_claim.lua): the first submission takes the record and
goes on with the request id it holds; the others are told that id. While the first is still being
submitted (its image fetched), the others wait for its request to exist, or for the key to be freed
when the first is refused (then one of them goes on in its place). The submission's enqueue marks
the record `created` and gives it the request's TTL in its one step (`RequestOptions`, submit.lua), so the
record lives as long as the request; one whose request has expired frees the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.core import lua_scripts
from app.core.errors import InvalidInput, ServiceError
from app.core.lifecycle import as_text
from app.core.redis_keys import RedisKeys
from app.core.settings import Settings

HEADER = "idempotency-key"
MAX_LENGTH = 255
# Fields of the record (the Lua scripts spell them the same).
REQUEST_ID, DIGEST, STATE, CREATED = "request_id", "digest", "state", "created"


class IdempotencyMismatch(ServiceError):
    status_code = 422
    default_message = "Idempotency-Key was used with a different request body"


def parse_header(headers: Mapping[str, str]) -> str | None:
    """The Idempotency-Key header's value; None when absent; 400 unless 1 to 255 printable ASCII."""
    value = headers.get(HEADER)
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_LENGTH or any(not " " <= ch <= "~" for ch in value):
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_LENGTH} printable ASCII characters")
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, bytes):  # an uploaded file
        return {"sha256": hashlib.sha256(value).hexdigest()}
    raise TypeError(f"cannot digest {type(value).__name__}")


def body_digest(data: Mapping[str, Any]) -> str:
    """A digest of the parsed body (JSON object or form fields): key order and the multipart
    boundary do not matter, every value does."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()


def pending_ttl_s(settings: Settings) -> int:
    """How long a first submission may take before its key is free again (its process died): the
    image fetch's limits and some margin; the enqueue then gives the record the request's TTL."""
    return int(settings.fetch_connect_timeout_s + settings.fetch_total_timeout_s + 30)


@dataclass(frozen=True)
class Claim:
    outcome: str  # NEW, READY, PENDING (see idempotency_claim.lua); MISMATCH is raised
    request_id: str
    record: str  # the record's Redis key


async def claim(
    aio: Any,
    keys: RedisKeys,
    settings: Settings,
    *,
    key_id: str,
    idempotency_key: str,
    digest: str,
    request_id: str,
) -> Claim:
    record = keys.idempotency(key_id, idempotency_key)
    reply = await lua_scripts.run(
        aio,
        "idempotency_claim",
        keys={"record": record},
        args={
            "request_id": request_id,
            "digest": digest,
            "ttl": pending_ttl_s(settings),
            "request_prefix": keys.request(""),
        },
    )
    outcome, held = as_text(reply[0]), as_text(reply[1])
    if outcome == "MISMATCH":
        raise IdempotencyMismatch(headers={"x-request-id": held})
    return Claim(outcome, held, record)


async def release(aio: Any, keys: RedisKeys, claimed: Claim) -> None:
    """Frees the key of a first submission refused before its request was written."""
    await lua_scripts.run(
        aio,
        "idempotency_release",
        keys={"record": claimed.record, "request": keys.request(claimed.request_id)},
        args={"request_id": claimed.request_id},
    )
