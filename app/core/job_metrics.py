"""Job metrics, the Redis side: workers add their timings to Redis hashes, `/metrics` reads them back.

Jobs run in worker processes, possibly on other machines, so their timings cannot live in the API
process: the worker adds them to Redis hashes (`record_job`) and `/metrics` reads them back, together
with queue depths and worker heartbeats. Every API replica therefore reports the same fleet-wide job,
queue and worker figures (aggregate them with `max`), and its own HTTP figures (aggregate with `sum`).

Redis layout (all under `RedisKeys.metrics(...)`, no TTL: Prometheus counters must never go down):
- `metrics:queue_time`, `metrics:inference_time`: hashes of `<model>|<le>` -> jobs whose value fell in
  that bucket (not cumulative; summed at scrape), `<model>|sum` and `<model>|count`.
- `metrics:jobs`: hash of `<model>|<status>` -> jobs ended with that status.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.utils import floatToGoString

from app.core.redis_keys import RedisKeys

# Queue time: from milliseconds (an idle worker) to many minutes (a long queue).
QUEUE_TIME_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# Inference time of a whole request (all samples): about 1 s (tiny, or a fast GPU) to minutes.
INFERENCE_TIME_BUCKETS: tuple[float, ...] = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300)

QUEUE_TIME = "queue_time"
INFERENCE_TIME = "inference_time"
JOBS = "jobs"
WEBHOOKS = "webhooks"  # hash outcome -> count, written by app/webhooks.py
_SEP = "|"  # model names cannot contain ":" or "/"; "|" keeps fields readable in redis-cli


def _bucket_bound(value: float, buckets: tuple[float, ...]) -> str:
    for bound in buckets:
        if value <= bound:
            return floatToGoString(bound)
    return "+Inf"


def _observe(pipe: Any, key: str, model: str, value: float, buckets: tuple[float, ...]) -> None:
    value = max(0.0, float(value))
    pipe.hincrby(key, f"{model}{_SEP}{_bucket_bound(value, buckets)}", 1)
    pipe.hincrbyfloat(key, f"{model}{_SEP}sum", value)
    pipe.hincrby(key, f"{model}{_SEP}count", 1)


def record_job(
    pipe: Any,
    keys: RedisKeys,
    *,
    base_model: str,
    status: str,
    queue_time_s: float | None,
    inference_time_s: float | None,
) -> None:
    """Queue the commands that count one ended job on a Redis pipeline (sync or asyncio).

    Only adds commands: the caller executes the pipeline, usually with the job's final writes, so a
    job is counted exactly when its end is recorded. A time that is None (a job cancelled before it
    started has no inference time) is not observed; the job is still counted under its status.
    """
    if queue_time_s is not None:
        _observe(pipe, keys.metrics(QUEUE_TIME), base_model, queue_time_s, QUEUE_TIME_BUCKETS)
    if inference_time_s is not None:
        _observe(pipe, keys.metrics(INFERENCE_TIME), base_model, inference_time_s, INFERENCE_TIME_BUCKETS)
    pipe.hincrby(keys.metrics(JOBS), f"{base_model}{_SEP}{status}", 1)
