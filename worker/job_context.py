"""What a worker process holds between jobs (`WorkerContext`: the resident engine, its Redis client,
the requests it must hand back), installed once by the worker service for the RQ job function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from app.core.lifecycle import Lifecycle
from app.core.redis_keys import RedisKeys


@dataclass
class WorkerContext:
    worker_id: str
    keys: RedisKeys
    lifecycle: Lifecycle
    redis: redis.Redis
    engine: Any  # worker.engine.Engine (imported lazily: torch)
    current: dict[str, Any] = field(default_factory=dict)
    # Requests this worker still holds (PROCESSING) whose job Redis failed under: the heartbeat
    # thread hands them back once Redis answers (app.reaper.hand_back).
    orphans: set[str] = field(default_factory=set)
    max_batch: int = 1  # SDXL_MAX_BATCH: requests run together in one engine call (1: no batching)
    max_batch_images: int = 8  # SDXL_MAX_BATCH_IMAGES: most images in one engine call
    batch_window_s: float = 0.0  # SDXL_BATCH_WINDOW_MS: time given to companions to arrive
    moderation: Any = None  # worker.moderation.Moderation (content blocks); None: none apply
    # Stops the heartbeat thread and takes this worker out of the registries (worker/service.py):
    # a worker about to exit on a fatal device error must not be announced alive again.
    stop_heartbeat: Callable[[], None] | None = None


_context: WorkerContext | None = None


def install_context(context: WorkerContext | None) -> None:
    """Called once by the worker service at start: the engine stays resident between jobs."""
    global _context
    _context = context


def installed_context() -> WorkerContext | None:
    return _context
