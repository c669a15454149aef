"""Redis connections with short socket timeouts: an outage is a quick 502, never a hang, and the
clients reconnect by themselves once Redis answers again."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from app.core.settings import Settings

# Blocking reads (BLPOP) wait at most this long per call, always below the socket timeout.
BLOCKING_SLICE_S = 1.0


def _options(settings: Settings) -> dict:
    timeout = max(settings.redis_socket_timeout_s, BLOCKING_SLICE_S + 0.5)
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "health_check_interval": 15,
        "retry_on_timeout": False,
    }


def async_client(settings: Settings, *, max_connections: int = 4096) -> aioredis.Redis:
    return aioredis.Redis.from_url(settings.redis_url, max_connections=max_connections, **_options(settings))


def sync_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **_options(settings))
