"""Worker-side batching (SDXL_MAX_BATCH=4): queued compatible requests run in one engine call.

Real API and worker subprocesses on the shared Redis (unique prefix), `tiny` on the CPU. Requests
are queued while the single worker is busy with a slow "blocker" request of another shape, so that
they are all waiting when it next pops a job. One engine call is proven by equal `started_at`, one
worker, and equal `inference_time` (the engine reports the batch's time to each of its jobs).
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from app.core.redis_keys import RedisKeys
from tests import image_factory
from tests.faults import JOB_LOST_S, kill_worker, request_fields, running_worker, slow_job, wait_until
from tests.stack import Stack, make_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"
IMAGE = base64.b64encode(image_factory.jpeg(128, 96)).decode()


def fast(prompt: str, seed: int, **overrides: Any) -> dict[str, Any]:
    return {
        "image": IMAGE,
        "prompt": prompt,
        "seed": seed,
        "base_model": "tiny",
        "num_inference_steps": 20,
        "strength": 0.5,
        "output_format": "png",
        **overrides,
    }


@pytest.fixture(scope="module")
def stack():
    stack = make_stack(SDXL_MAX_BATCH="4")
    stack.start_api()
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(stack) -> str:
    return stack.create_key(name="batching")


def submit(stack: Stack, key: str, body: dict[str, Any]) -> str:
    response = httpx.post(f"{stack.base_url}/v2/{SLUG}", json=body, headers={"x-api-key": key}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def cancel(stack: Stack, key: str, request_id: str) -> None:
    response = httpx.delete(
        f"{stack.base_url}/v2/requests/{request_id}", headers={"x-api-key": key}, timeout=10
    )
    assert response.status_code == 202, response.text


def queue_behind_blocker(stack: Stack, key: str, bodies: list[dict[str, Any]]) -> list[str]:
    """Submits `bodies` while the worker runs a slow request: they all wait QUEUED together."""
    blocker = submit(stack, key, slow_job(128, steps=100))
    running_worker(stack, blocker, timeout=60)
    ids = [submit(stack, key, body) for body in bodies]
    assert request_fields(stack, blocker)["status"] == "PROCESSING", "the blocker outlived the submissions"
    assert all(request_fields(stack, rid)["status"] == "QUEUED" for rid in ids)
    return ids


def ended(stack: Stack, ids: list[str], timeout: float = 90) -> list[dict[str, str]]:
    def check():
        records = [request_fields(stack, rid) for rid in ids]
        return records if all(r["status"] in ("COMPLETED", "FAILED") for r in records) else None

    return wait_until(check, timeout, f"{len(ids)} requests to end", interval=0.1)


def output_pixels(stack: Stack, request_id: str) -> list[np.ndarray]:
    result = json.loads(request_fields(stack, request_id)["result"])
    client = stack.redis()
    return [
        np.asarray(
            Image.open(io.BytesIO(client.get(RedisKeys(stack.prefix).output(request_id, i["file_name"]))))
        ).astype(np.int16)
        for i in result["images"]
    ]


def inference_time(record: dict[str, str]) -> float:
    return json.loads(record["result"])["inference_time"]


def test_four_queued_compatible_requests_run_in_one_engine_call_and_match_unbatched_runs(stack, key):
    bodies = [
        fast("a red house", 1),
        fast("a blue car", 2, samples=2),
        fast("a cat on a table", 3),
        fast("a dog", 4, output_format="jpeg"),
    ]
    ids = queue_behind_blocker(stack, key, bodies)
    records = ended(stack, ids)
    assert [r["status"] for r in records] == ["COMPLETED"] * 4
    # One batch: same worker, same start, one engine call (its time is reported to every job).
    assert len({r["worker"] for r in records}) == 1
    assert len({r["started_at"] for r in records}) == 1
    assert len({inference_time(r) for r in records}) == 1
    # Claimed requests' RQ job hashes are gone, as RQ deletes those it ran (result_ttl=0).
    assert not any(stack.redis().exists(f"rq:job:{rid}") for rid in ids)
    assert stack.redis().zcard(stack.keys.processing) == 0

    # Each output equals the same request run alone (up to the rounding of batched kernels).
    for body, rid in zip(bodies[:2], ids[:2], strict=True):
        alone = submit(stack, key, body)
        [record] = ended(stack, [alone])
        assert record["status"] == "COMPLETED"
        batched, single = output_pixels(stack, rid), output_pixels(stack, alone)
        assert len(batched) == len(single) == body.get("samples", 1)
        for x, y in zip(batched, single, strict=True):
            assert np.abs(x - y).max() <= 3


def test_incompatible_requests_are_not_batched_together(stack, key):
    bodies = [
        fast("twenty steps a", 1),
        fast("thirty steps a", 2, num_inference_steps=30),
        fast("twenty steps b", 3),
        fast("thirty steps b", 4, num_inference_steps=30),
        fast("other size", 5, image=base64.b64encode(image_factory.jpeg(96, 128)).decode()),
    ]
    ids = queue_behind_blocker(stack, key, bodies)
    records = ended(stack, ids)
    assert [r["status"] for r in records] == ["COMPLETED"] * 5
    starts = [r["started_at"] for r in records]
    # Batches: {20 steps a, 20 steps b}, {30 steps a, 30 steps b}, {other size} alone.
    assert starts[0] == starts[2] and starts[1] == starts[3]
    assert len({starts[0], starts[1], starts[4]}) == 3
    assert inference_time(records[0]) == inference_time(records[2])
    assert inference_time(records[1]) == inference_time(records[3])


def test_cancel_of_one_request_in_a_running_batch_ends_it_and_the_others_complete(stack, key):
    bodies = [slow_job(128, steps=60) | {"seed": seed, "prompt": f"slow {seed}"} for seed in range(3)]
    ids = queue_behind_blocker(stack, key, bodies)
    for rid in ids:
        running_worker(stack, rid, timeout=60)
    records = [request_fields(stack, rid) for rid in ids]
    assert len({r["started_at"] for r in records}) == 1, "the three requests run as one batch"
    cancel(stack, key, ids[1])
    records = ended(stack, ids)
    assert [r["status"] for r in records] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert records[1]["error"] == "cancelled"
    # The two others ran again together, without the cancelled one.
    assert inference_time(records[0]) == inference_time(records[2])
    assert stack.redis().zcard(stack.keys.processing) == 0


def test_batching_is_off_by_default_on_the_cpu_and_on_on_cuda():
    import torch

    from app.core.settings import Settings
    from worker.fast_path import resolve

    settings = Settings(_env_file=None)
    assert resolve(settings, torch.device("cpu")).max_batch == 1
    assert resolve(settings, torch.device("cuda")).max_batch == 4


def test_a_batch_keeps_to_its_image_budget_and_each_request_its_credits_seeds_and_progress(stack):
    from app.core import api_keys

    key = stack.create_key(name="budget", credits=100)
    # SDXL_MAX_BATCH_IMAGES is 8: 3 + 3 + 2 fit in one call, the third request (3 more) does not.
    samples = [3, 3, 3, 2]
    bodies = [fast(f"budget {i}", 100 + 10 * i, samples=n) for i, n in enumerate(samples)]
    ids = queue_behind_blocker(stack, key, bodies)
    records = ended(stack, ids)
    assert [r["status"] for r in records] == ["COMPLETED"] * 4
    starts = [r["started_at"] for r in records]
    assert starts[0] == starts[1] == starts[3] != starts[2]
    for body, record in zip(bodies, records, strict=True):
        result = json.loads(record["result"])
        assert result["seeds"] == [body["seed"] + i for i in range(body["samples"])]
        assert int(record["step"]) == int(record["total"]) > 0, "progress is each request's own"
    used = api_keys.get_key(stack.redis(), stack.keys, key).used
    assert used == 1 + sum(samples), "the blocker's credit and one per image, nothing more"


def test_requests_sent_within_the_batch_window_share_one_call():
    stack = make_stack(SDXL_MAX_BATCH="4", SDXL_BATCH_WINDOW_MS="2000")
    try:
        stack.start_api()
        stack.start_worker()
        key = stack.create_key(name="window")
        first = submit(stack, key, fast("window a", 1))
        # The idle worker starts `first` at once, then waits up to 2 s for companions.
        wait_until(lambda: request_fields(stack, first)["status"] == "PROCESSING", 30, "the first to start")
        second = submit(stack, key, fast("window b", 2))
        records = ended(stack, [first, second])
        assert [r["status"] for r in records] == ["COMPLETED"] * 2
        assert records[0]["started_at"] == records[1]["started_at"]
        assert inference_time(records[0]) == inference_time(records[1])
    finally:
        stack.stop()


def test_a_killed_worker_batch_is_reaped_request_by_request_and_runs_again():
    stack = make_stack(SDXL_MAX_BATCH="4", SDXL_JOB_LOST_S=str(JOB_LOST_S))
    try:
        stack.start_api()
        stack.start_worker()
        key = stack.create_key(name="lost", credits=20)
        bodies = [slow_job(128, steps=100) | {"seed": seed, "prompt": f"lost {seed}"} for seed in range(3)]
        ids = queue_behind_blocker(stack, key, bodies)
        lost = [running_worker(stack, rid, timeout=60) for rid in ids]
        assert len(set(lost)) == 1
        # Every claimed request is in the processing zset, where the reaper looks.
        assert {m.decode() for m in stack.redis().zrange(stack.keys.processing, 0, -1)} >= set(ids)
        kill_worker(stack, lost[0])
        # (Not waiting for it to announce itself: the dead worker's heartbeat may still be counted.)
        stack.start_worker(wait=False)
        records = ended(stack, ids, timeout=120)
        assert [r["status"] for r in records] == ["COMPLETED"] * 3
        assert all(r["attempts"] == "2" and r["worker"] != lost[0] for r in records)
        assert len({r["started_at"] for r in records}) == 1, "queued again, they batch again"
    finally:
        stack.stop()
