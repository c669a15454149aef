"""Admission cost on the hot path: `authenticate` + `admit` against the local Redis, beside a
bare PING (the floor: one round trip), sequential calls on one async connection.

    .venv/bin/python bench/bench_admission.py [--calls 2000]

Uses REDIS_URL (default redis://localhost:6379/0) and a throwaway key prefix, removed at the end.
Prints median and p99 in microseconds; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis
import redis.asyncio as aioredis

from app.core import admission, api_keys
from app.core.models_config import load_models_config
from app.core.redis_keys import RedisKeys
from app.core.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent


async def timed(calls: int, step: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(min(100, calls)):  # warm-up: connection, script load
        await step(-1 - i)
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        await step(i)
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{name:<44} median {statistics.median(ordered):8.1f} us   p99 {p99:8.1f} us   (n={len(ordered)})"


async def run(settings: Settings, calls: int) -> list[str]:
    keys = RedisKeys(settings.redis_prefix)
    sync = redis.Redis.from_url(settings.redis_url)
    # Worst realistic case: a balance, a rate limit (its sorted-set log) and a model list.
    metered, _ = api_keys.create_key(sync, keys, name="bench", credits=10**12, rpm=10**9, models=["tiny"])
    unlimited, _ = api_keys.create_key(sync, keys, name="bench-unlimited")
    sync.close()
    models_file = Path(settings.models_file)
    if not models_file.is_absolute():
        models_file = REPO_ROOT / models_file
    queue_keys = [keys.rq_queue_key(name) for name in load_models_config(models_file).names]
    open_settings = settings.model_copy(update={"auth": "disabled"})

    r = aioredis.Redis.from_url(settings.redis_url)
    try:

        def admitted(key: str, s: Settings, tag: str) -> Callable[[int], Awaitable[object]]:
            async def step(i: int) -> None:
                record = await admission.authenticate(r, keys, s, key)
                await admission.admit(
                    r, keys, s, record, request_id=f"bench-{tag}-{i}", cost=1, queue_keys=queue_keys
                )

            return step

        lines = [
            summary("PING", await timed(calls, lambda i: r.ping())),
            summary(
                "authenticate (metered key, rate counted)",
                await timed(calls, lambda i: admission.authenticate(r, keys, settings, metered)),
            ),
            summary(
                "authenticate + admit (metered key)",
                await timed(calls, admitted(metered, settings, "metered")),
            ),
            summary(
                "authenticate + admit (unlimited key)",
                await timed(calls, admitted(unlimited, settings, "unlimited")),
            ),
            summary(
                "authenticate + admit (SDXL_AUTH=disabled)",
                await timed(calls, admitted("", open_settings, "open")),
            ),
        ]
    finally:
        await r.aclose()
    return lines


def cleanup(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    names = list(client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000))
    if names:
        client.delete(*names)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    settings = load_settings(redis_prefix=f"bench{uuid.uuid4().hex[:8]}")
    try:
        lines = asyncio.run(run(settings, args.calls))
    finally:
        cleanup(settings)
    print(f"admission against {settings.redis_url}, sequential calls, one connection")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
