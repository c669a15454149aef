"""Redis connections with short socket timeouts: an outage is a quick 502, never a hang, and the
clients reconnect by themselves once Redis answers again.

After a Redis restart every pooled connection is stale and would fail its next call. Each call is
retried once, at once, on a fresh connection, on a ConnectionError only (a timeout is not retried:
a hung Redis must stay a quick 502). A stale connection fails before the server sees the command,
so the retry runs it once; in the rare case of a connection lost after the server ran a command,
what the API and workers send is safe to run twice: the Lua steps check the state first (a second
cancel, start, finish, reap or claim changes nothing), a repeated submission finds the request its
first run wrote and is answered 502 with the request's id (app/api/submission.py), and reads are
reads. Metrics counters may count one event
twice. The CLI's key commands (credits) use a client without this retry.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

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
    retry = redis.asyncio.retry.Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    return aioredis.Redis.from_url(
        settings.redis_url, max_connections=max_connections, retry=retry, **_options(settings)
    )


def sync_client(settings: Settings) -> redis.Redis:
    retry = redis.retry.Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    return redis.Redis.from_url(settings.redis_url, retry=retry, **_options(settings))
