"""A memory budget for input-image decodes in one API process (a weighted semaphore of bytes).

A small file can decode to a large image (1.6 KB of lossless WebP is 8000x5000 pixels), so the
number of decodes at once is not the right bound: their memory is. Each decode holds its
estimated cost (from the header's size, before a pixel is decoded) until it ends; one that does
not fit waits a short while, then is refused with a 503 and Retry-After instead of letting the
process grow. A decode larger than the whole budget runs alone rather than never.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.core.errors import Overloaded

RETRY_AFTER_S = 2


class DecodeBudget:
    def __init__(self, capacity_bytes: int, *, wait_s: float) -> None:
        self.capacity = capacity_bytes
        self.wait_s = wait_s
        self.in_use = 0
        # Created lazily: an asyncio primitive binds to the loop of its first use.
        self._changed: asyncio.Condition | None = None
        self._waiters = 0  # decodes waiting for room: a new one queues behind them

    @asynccontextmanager
    async def hold(self, cost_bytes: int) -> AsyncIterator[None]:
        cost = min(max(cost_bytes, 0), self.capacity)
        if self._changed is None:
            self._changed = asyncio.Condition()
        changed = self._changed
        if self.in_use + cost <= self.capacity and not self._waiters:
            # Room now and nobody ahead: taken without the condition (one event loop, no await
            # between the check and the take), the common case of every small image.
            self.in_use += cost
        else:
            await self._wait_for_room(changed, cost)
        try:
            yield
        finally:
            self.in_use -= cost
            if self._waiters:
                async with changed:
                    changed.notify_all()

    async def _wait_for_room(self, changed: asyncio.Condition, cost: int) -> None:
        self._waiters += 1
        try:
            async with changed:
                await asyncio.wait_for(
                    changed.wait_for(lambda: self.in_use + cost <= self.capacity), self.wait_s
                )
                self.in_use += cost
        except TimeoutError:
            raise Overloaded(
                "the server is decoding too many large images right now; retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        finally:
            self._waiters -= 1
