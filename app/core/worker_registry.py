"""The registry of live workers: who is alive, and who serves which base model, read in O(workers).

Each heartbeat puts the worker in a sorted set of all workers and in one per model it serves,
scored by when that heartbeat expires (`register`); a read drops the expired members first
(`live_workers`, `live_workers_serving`). /readyz, /metrics, the ETA, the v1 "no worker serves this
model" answer and the container healthchecks read it, so none of them scans the keyspace, whatever
else Redis holds. The heartbeat key itself (`RedisKeys.worker`, with its TTL and the worker's
details) stays the truth for one worker's liveness (the reaper checks it by id).

Every function takes a sync or an asyncio client: with an asyncio one it returns an awaitable.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from app.core import lua_scripts
from app.core.redis_keys import RedisKeys


def register(client: Any, keys: RedisKeys, worker_id: str, models: Iterable[str], ttl_s: float) -> Any:
    """One heartbeat: `worker_id` is alive, serving `models`, for `ttl_s` more seconds."""
    return lua_scripts.run(
        client,
        "register_worker",
        keys={"workers": keys.live_workers, "serving": [keys.workers_serving(m) for m in models]},
        args={"worker": worker_id, "ttl_ms": int(ttl_s * 1000)},
    )


def unregister(client: Any, keys: RedisKeys, worker_id: str, models: Iterable[str]) -> Any:
    """A worker that stops leaves the registry at once (rather than when its heartbeat expires)."""
    pipe = client.pipeline(transaction=True)
    pipe.zrem(keys.live_workers, worker_id)
    for model in models:
        pipe.zrem(keys.workers_serving(model), worker_id)
    return pipe.execute()


def _names(reply: list[bytes | str]) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else m for m in reply)


def _read(client: Any, key: str) -> Any:
    reply = lua_scripts.run(client, "live_workers", keys={"workers": key})
    if inspect.isawaitable(reply):

        async def decoded() -> list[str]:
            return _names(await reply)

        return decoded()
    return _names(reply)


def live_workers(client: Any, keys: RedisKeys) -> Any:
    """The ids of the live workers (list[str], or an awaitable of it)."""
    return _read(client, keys.live_workers)


def live_workers_serving(client: Any, keys: RedisKeys, base_model: str) -> Any:
    """The ids of the live workers serving `base_model` (list[str], or an awaitable of it)."""
    return _read(client, keys.workers_serving(base_model))


def host_has_live_worker(client: Any, keys: RedisKeys, host: str) -> bool:
    """For a worker container's healthcheck (sync): a live worker of this host (worker ids start
    with the host name, worker/service.py) is in the registry."""
    return any(worker_id.startswith(f"{host}-") for worker_id in live_workers(client, keys))


def healthcheck() -> int:
    """`python -c 'from app.core.worker_registry import healthcheck; raise SystemExit(healthcheck())'`:
    0 while this container's worker keeps its heartbeat, 1 otherwise."""
    import socket

    import redis

    from app.core.settings import Settings

    settings = Settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        alive = host_has_live_worker(client, RedisKeys(settings.redis_prefix), socket.gethostname())
    except redis.RedisError:
        return 1
    return 0 if alive else 1
