"""A bound on the connections that wait on Redis for a request's next change: live status streams
(`GET /v2/requests/{id}/events`) and long polls (`?wait=`).

Each one holds a connection of the API's Redis pool for as long as it is open (XREAD BLOCK); with
no bound, enough idle streams would take the whole pool, and every other route of this process
would fail with "Too many connections". Past `SDXL_MAX_OPEN_WAITS` (per API process), a new
stream is a 503 with Retry-After, and a long poll answers at once, as `?wait=0` would.
"""

from __future__ import annotations

from app.core.errors import Overloaded

RETRY_AFTER_S = 2


class OpenWaits:
    """Counts the open waits of this process (one event loop: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def try_open(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def refuse_when_full(self) -> None:
        """Overloaded (503) when this process already has `limit` open waits. A stream counts itself
        only once it starts waiting (`try_open` in its generator, whose `finally` closes it even when
        the client goes away), so that a response never sent leaves nothing counted."""
        if self.open >= self.limit:
            raise Overloaded(
                f"too many open status streams on this server (limit {self.limit}): retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

    def close(self) -> None:
        self.open -= 1
