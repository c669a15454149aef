"""Live status: reading a request's event stream (CONTRACT 10, "Live status").

Every change of a request (a new status, a denoising step, its end) is an entry of a Redis Stream,
`RedisKeys.events(id)`, appended by the Lua step that makes the change (app/core/lua/_events.lua).
`GET /v2/requests/{id}/events` and `status?wait=S` read it with a blocking XREAD, so they wake on the
change itself: no sleep-and-poll anywhere. Entry ids are the stream's own (`<ms>-<seq>`, ordered),
which makes them the SSE event ids: a client that reconnects with `Last-Event-ID` reads on from
there, without duplicates and without a gap.

Entries: `kind=status status=<STATUS>`, `kind=progress step=<k> total=<n>`, and `kind=result`, the
last one, written in the same step as the final status.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from app.core.errors import InvalidInput
from app.core.lifecycle import as_text, decode_hash
from app.core.redis_clients import BLOCKING_SLICE_S
from app.core.redis_keys import RedisKeys

STATUS = "status"
PROGRESS = "progress"
RESULT = "result"
# The id before any entry: reading after it reads the whole stream.
START = "0-0"
_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
MAX_WAIT_S = 60.0


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
    fields: dict[str, str]


def parse_event_id(value: str) -> str:
    """A `Last-Event-ID` as sent back by a client: one of this server's event ids."""
    value = value.strip()
    if not _ENTRY_ID.match(value):
        raise InvalidInput(
            f"Last-Event-ID must be an event id of this stream (like 1717000000000-0), got {value[:40]!r}"
        )
    return value


def parse_wait(value: str | None) -> float:
    """`?wait=S` of the status route: seconds, 0 to 60 (absent: 0, answer at once)."""
    if value is None or value == "":
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 <= seconds <= MAX_WAIT_S:  # also refuses nan and inf
        raise InvalidInput(f"wait must be a number of seconds between 0 and 60, got {value[:20]!r}")
    return seconds


async def snapshot(aio: Any, keys: RedisKeys, request_id: str) -> tuple[dict[str, str], str]:
    """The request hash and the id of its stream's last entry, read in one MULTI/EXEC: reading on
    after that id gives exactly the changes the hash does not show yet."""
    async with aio.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.request(request_id))
        pipe.xrevrange(keys.events(request_id), count=1)
        raw, last = await pipe.execute()
    return decode_hash(raw), as_text(last[0][0]) if last else START


async def read_after(
    aio: Any, keys: RedisKeys, request_id: str, after: str, timeout_s: float, count: int = 200
) -> list[Entry]:
    """The entries after `after`, waiting up to `timeout_s` for the first one (0: do not wait).

    XREAD BLOCK returns the moment an entry is appended. It blocks in slices shorter than the Redis
    socket timeout (as the v1 wait's BLPOP does), so an outage is still a quick error."""
    deadline = time.monotonic() + timeout_s
    stream = keys.events(request_id)
    while True:
        remaining = deadline - time.monotonic()
        block_ms = int(min(remaining, BLOCKING_SLICE_S) * 1000) if remaining > 0.001 else None
        reply = await aio.xread({stream: after}, count=count, block=block_ms)
        if reply:
            [(_, entries)] = reply
            return [_entry(entry_id, fields) for entry_id, fields in entries]
        if block_ms is None:
            return []


def _entry(entry_id: Any, raw: dict[Any, Any]) -> Entry:
    fields = decode_hash(raw)
    return Entry(as_text(entry_id), fields.pop("kind", ""), fields)
