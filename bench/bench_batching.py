"""Worker batching benchmark (run by hand: `.venv/bin/python bench/bench_batching.py`). Prints
figures, asserts nothing.

16 compatible `tiny` requests (128x96, 20 steps, strength 0.5) are queued with no worker running,
then one worker starts, with SDXL_MAX_BATCH=1 and then 4. Drain time: from the first request's
start to the last one's end (both written by the worker into the request hashes), so the worker's
own start-up is not counted. Real API, worker and Redis (tests/stack.py), CPU unless SDXL_DEVICE says.
"""

from __future__ import annotations

import base64
import io
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.stack import make_stack

SLUG = "sdxl-img2img"
REQUESTS = 16


def image_b64() -> str:
    buffer = io.BytesIO()
    image = Image.new("RGB", (128, 96), "teal")
    for x in range(0, 128, 16):
        image.paste("orange", (x, 0, x + 8, 96))
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def drain(max_batch: int) -> tuple[float, int]:
    """Seconds to drain the queue and the number of distinct batches (distinct start times)."""
    stack = make_stack(SDXL_MAX_BATCH=str(max_batch))
    try:
        stack.start_api()
        key = stack.create_key(name="bench")
        image = image_b64()
        with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=30) as http:
            ids = [
                http.post(
                    f"/v2/{SLUG}",
                    json={
                        "image": image,
                        "prompt": f"a house, variant {i}",
                        "seed": i,
                        "base_model": "tiny",
                        "num_inference_steps": 20,
                        "strength": 0.5,
                    },
                ).json()["request_id"]
                for i in range(REQUESTS)
            ]
        stack.start_worker()
        client = stack.redis()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            records = [
                client.hmget(stack.keys.request(rid), ["status", "started_at", "finished_at"]) for rid in ids
            ]
            if all(r[0] in (b"COMPLETED", b"FAILED") for r in records):
                break
            time.sleep(0.1)
        statuses = {r[0].decode() for r in records}
        assert statuses == {"COMPLETED"}, statuses
        starts = [float(r[1]) for r in records]
        ends = [float(r[2]) for r in records]
        return max(ends) - min(starts), len(set(starts))
    finally:
        stack.stop()


def main() -> None:
    results = {n: drain(n) for n in (1, 4)}
    for n, (seconds, batches) in results.items():
        print(
            f"SDXL_MAX_BATCH={n}: {REQUESTS} requests drained in {seconds:.3f} s "
            f"({REQUESTS / seconds:.2f} req/s, {batches} engine calls)"
        )
    print(f"speed-up: {results[1][0] / results[4][0]:.2f}x")


if __name__ == "__main__":
    main()
