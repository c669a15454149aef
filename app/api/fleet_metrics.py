"""The fleet's figures for `/metrics`, read from Redis at scrape time: queue depths, live workers and
their GPU memory (from the registry of live workers), and the job, queue-time, inference-time and
webhook counters the workers and the API write there (`app.core.job_metrics`)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import redis.asyncio
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from app.core import worker_registry
from app.core.job_metrics import (
    _SEP,
    INFERENCE_TIME,
    INFERENCE_TIME_BUCKETS,
    JOBS,
    QUEUE_TIME,
    QUEUE_TIME_BUCKETS,
    WEBHOOKS,
)
from app.core.redis_keys import RedisKeys


def _split(field: bytes | str) -> tuple[str, str]:
    model, _, tail = _text(field).rpartition(_SEP)
    return model, tail


def _histogram_family(
    name: str,
    documentation: str,
    raw: dict[Any, Any],
    buckets: tuple[float, ...],
    model_names: Iterable[str],
) -> HistogramMetricFamily:
    per_model: dict[str, dict[str, float]] = {m: {} for m in model_names}
    for field, value in raw.items():
        model, tail = _split(field)
        per_model.setdefault(model, {})[tail] = float(value)
    family = HistogramMetricFamily(name, documentation, labels=["model"])
    for model, fields in per_model.items():
        cumulative = 0.0
        series: list[tuple[str, float]] = []
        for bound in buckets:
            label = floatToGoString(bound)
            cumulative += fields.get(label, 0.0)
            series.append((label, cumulative))
        series.append(("+Inf", fields.get("count", cumulative + fields.get("+Inf", 0.0))))
        family.add_metric([model], series, sum_value=fields.get("sum", 0.0))
    return family


async def read_fleet(client: redis.asyncio.Redis, keys: RedisKeys, model_names: list[str]) -> list[Metric]:
    """Everything the scrape reads from Redis; raises RedisError (or TimeoutError) when it cannot."""
    pipe = client.pipeline(transaction=False)
    for model in model_names:
        pipe.llen(keys.rq_queue_key(model))
    pipe.hgetall(keys.metrics(QUEUE_TIME))
    pipe.hgetall(keys.metrics(INFERENCE_TIME))
    pipe.hgetall(keys.metrics(JOBS))
    pipe.hgetall(keys.metrics(WEBHOOKS))
    results = await pipe.execute()
    depths = results[: len(model_names)]
    queue_raw, inference_raw, jobs_raw, webhooks_raw = results[len(model_names) :]

    families: list[Metric] = [_queue_depth(model_names, depths), *await _worker_families(client, keys)]
    families.append(
        _histogram_family(
            "sdxl_job_queue_time_seconds",
            "Time a request waited in the queue before a worker started it, by base model.",
            queue_raw,
            QUEUE_TIME_BUCKETS,
            model_names,
        )
    )
    families.append(
        _histogram_family(
            "sdxl_job_inference_time_seconds",
            "Time a worker spent generating a request (all its samples), by base model.",
            inference_raw,
            INFERENCE_TIME_BUCKETS,
            model_names,
        )
    )
    families.append(
        _counter_family(
            "sdxl_jobs", "Requests ended, by base model and final status.", ["model", "status"], jobs_raw
        )
    )
    families.append(
        _counter_family("sdxl_webhooks", "Webhook delivery attempts, by outcome.", ["outcome"], webhooks_raw)
    )
    return families


def _queue_depth(model_names: list[str], depths: list[int]) -> Metric:
    depth = GaugeMetricFamily(
        "sdxl_queue_depth", "Requests waiting in the queue, by base model.", labels=["model"]
    )
    for model, n in zip(model_names, depths, strict=True):
        depth.add_metric([model], float(n))
    return depth


async def _worker_families(client: redis.asyncio.Redis, keys: RedisKeys) -> list[Metric]:
    """Live workers and their GPU memory: the registry, then their heartbeats (O(workers), no scan)."""
    worker_ids = await worker_registry.live_workers(client, keys)
    values = await client.mget([keys.worker(w) for w in worker_ids]) if worker_ids else []
    # A heartbeat expires with its worker: one that expired between the two reads is not counted.
    alive = [(w, v) for w, v in zip(worker_ids, values, strict=True) if v is not None]
    gpu = GaugeMetricFamily(
        "sdxl_worker_gpu_memory_bytes",
        "GPU memory allocated by each live worker (workers on a CPU report none).",
        labels=["worker"],
    )
    for worker_id, raw in alive:
        memory = _gpu_memory(raw)
        if memory is not None:
            gpu.add_metric([worker_id], memory)
    count = GaugeMetricFamily("sdxl_workers_alive", "Workers whose heartbeat is alive.", value=len(alive))
    return [count, gpu]


def _gpu_memory(raw: Any) -> float | None:
    """A heartbeat's `gpu_memory_bytes`, or None when it holds none (or anything but a number)."""
    try:
        beat = json.loads(raw)
    except (ValueError, TypeError):
        return None
    memory = beat.get("gpu_memory_bytes") if isinstance(beat, dict) else None
    if isinstance(memory, int | float) and not isinstance(memory, bool) and math.isfinite(memory):
        return float(memory)
    return None


def _counter_family(name: str, documentation: str, labels: list[str], raw: dict[Any, Any]) -> Metric:
    """A counter per hash field: `model|status` fields split in two labels, others one."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for field, value in sorted(raw.items()):
        values = list(_split(field)) if len(labels) == 2 else [_text(field)]
        family.add_metric(values, float(value))
    return family


def _text(field: bytes | str) -> str:
    return field.decode() if isinstance(field, bytes) else field
