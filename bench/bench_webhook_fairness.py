"""Webhook fairness benchmark (run by hand: `.venv/bin/python bench/bench_webhook_fairness.py`).
Prints figures, asserts nothing.

N deliveries point at a receiver that accepts and never answers (tests/test_webhook_fairness.py's
HangingReceiver, on 127.0.0.2); once they are in flight, one more delivery to a good receiver on
another host comes due. The figure is the time from then to the good POST's arrival, for the
deliverer (app/core/webhooks.py, in this process, on the real Redis, real sockets) with the
per-host bound off (SDXL_WEBHOOK_PER_HOST = SDXL_WEBHOOK_CONCURRENCY: the old behaviour) and on
(the default, 4), with the same attempt bound in both (TIMEOUT_S, shorter than the default 5 s so
that "off" runs end in seconds: off grows with it, about one bound per 16 hanging deliveries).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.core.job_spec import Status
from app.core.redis_keys import RedisKeys, RequestField
from app.core.settings import Settings
from app.core.webhooks import Deliverer, member
from tests.conftest import REDIS_URL
from tests.http_fixtures import Exchange, LocalHTTPServer
from tests.specs import make_spec
from tests.test_webhook_fairness import HangingReceiver

HANGING = (16, 64)
RUNS = 3
SLOTS = 16
TIMEOUT_S = 2.0


def record(url: str, request_id: str) -> dict[str, str]:
    spec = make_spec(request_id=request_id, scheduler="Euler", num_inference_steps=4, guidance_scale=7.5)
    return {
        RequestField.STATUS: Status.FAILED.value,
        RequestField.SPEC: spec.to_json(),
        RequestField.ERROR: "cancelled",
        RequestField.WEBHOOK: url,
        RequestField.BASE_URL: "",
    }


async def one_run(per_host: int, hanging: int, hang_url: str, good_url: str, arrivals: list[float]) -> float:
    prefix = f"b{uuid.uuid4().hex[:10]}"
    keys = RedisKeys(prefix)
    settings = Settings(
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        allow_private_urls=True,
        webhook_concurrency=SLOTS,
        webhook_per_host=per_host,
        webhook_timeout_s=TIMEOUT_S,
    )
    aio = aioredis.Redis.from_url(REDIS_URL)
    try:
        now = float((await aio.time())[0])
        for n in range(hanging):
            await aio.hset(keys.request(f"h{n}"), mapping=record(hang_url, f"h{n}"))
            await aio.zadd(keys.webhooks, {member(0, f"h{n}"): now - 1})
        await aio.hset(keys.request("good"), mapping=record(good_url, "good"))
        task = asyncio.create_task(Deliverer(settings, keys, aio).run())
        await asyncio.sleep(0.3)  # the hanging ones claimed and in flight
        arrivals.clear()
        seconds, micros = await aio.time()
        await aio.zadd(keys.webhooks, {member(0, "good"): seconds + micros / 1e6})
        await aio.rpush(keys.webhook_wake, 1)
        due = time.monotonic()
        while not arrivals and time.monotonic() - due < 120:
            await asyncio.sleep(0.005)
        delay = arrivals[0] - due if arrivals else float("inf")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return delay
    finally:
        sync = redis.Redis.from_url(REDIS_URL)
        found = list(sync.scan_iter(match=f"{prefix}:*", count=1000))
        if found:
            sync.delete(*found)
        sync.close()
        await aio.aclose()


def main() -> None:
    logging.getLogger("sdxl.webhooks").setLevel(logging.ERROR)  # every hanging attempt's failure
    arrivals: list[float] = []

    def good(ex: Exchange) -> None:
        arrivals.append(time.monotonic())
        ex.start(200, {"Content-Length": "0"})

    hanging_receiver = HangingReceiver()
    with LocalHTTPServer() as server:
        good_url = server.route("/good", good)
        print(f"{SLOTS} slots, attempt bound {TIMEOUT_S} s, median of {RUNS} runs")
        print(f"{'hanging':>8} {'per-host off (ms)':>18} {'per-host 4 (ms)':>16} {'ratio':>8}")
        for hanging in HANGING:
            medians = {}
            for per_host in (SLOTS, 4):
                delays = [
                    asyncio.run(one_run(per_host, hanging, hanging_receiver.url(), good_url, arrivals))
                    for _ in range(RUNS)
                ]
                medians[per_host] = statistics.median(delays) * 1000
            ratio = medians[SLOTS] / max(medians[4], 0.001)
            print(f"{hanging:>8} {medians[SLOTS]:>18.0f} {medians[4]:>16.0f} {ratio:>7.0f}x")
    hanging_receiver.close()


if __name__ == "__main__":
    main()
