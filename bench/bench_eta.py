"""ETA accuracy benchmark (run by hand: `.venv/bin/python bench/bench_eta.py`). Prints figures,
asserts nothing.

A real API and one worker on `tiny` (tests/stack.py) serve a steady queue: about DEPTH requests
(64x64, 20 steps, strength 0.65) always waiting, a new one submitted as soon as one ends. Right after
each submission its status is read: `eta_s` is compared with what happened, the request's end (its
`finished_at`, written by the worker) less the moment of that read. A few requests run first so
that the workers' measure of seconds per step exists, as it does on a server that has been up.
"""

from __future__ import annotations

import base64
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import image_factory
from tests.stack import make_stack

SLUG = "sdxl-img2img"
DEPTH = 6
MEASURED = 40
WARM_UP = 3
BODY = {
    "image": base64.b64encode(image_factory.jpeg(64, 64)).decode(),
    "prompt": "a steady queue",
    "base_model": "tiny",
    "num_inference_steps": 20,
    "strength": 0.65,
}


def wait_end(http: httpx.Client, request_id: str) -> None:
    while http.get(f"/v2/requests/{request_id}/status", params={"wait": 30}).json()["status"] not in (
        "COMPLETED",
        "FAILED",
    ):
        pass


def main() -> None:
    stack = make_stack()
    try:
        stack.start_api()
        stack.start_worker()
        key = stack.create_key(name="bench")
        asked: dict[str, tuple[float, float, int]] = {}  # id -> (time of the read, eta_s, position)
        with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=60) as http:
            for _ in range(WARM_UP):
                wait_end(http, http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"])
            pending: list[str] = []
            submitted = 0
            while submitted < MEASURED or pending:
                while submitted < MEASURED and len(pending) < DEPTH + 1:
                    request_id = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
                    body = http.get(f"/v2/requests/{request_id}/status").json()
                    asked[request_id] = (time.time(), body["eta_s"], body.get("queue_position", -1))
                    pending.append(request_id)
                    submitted += 1
                wait_end(http, pending.pop(0))
        client = stack.redis()
        errors, etas, actuals = [], [], []
        for request_id, (at, eta_s, _) in asked.items():
            finished = float(client.hget(stack.keys.request(request_id), "finished_at"))
            took = finished - at
            errors.append(abs(eta_s - took) / took)
            etas.append(eta_s)
            actuals.append(took)
        errors.sort()
        print(
            f"{len(errors)} requests on a queue about {DEPTH} deep, 1 worker, tiny 64x64, 13 denoising steps"
        )
        actual, estimated = statistics.median(actuals), statistics.median(etas)
        print(f"actual time to end: median {actual:.2f} s; eta_s: median {estimated:.2f} s")
        print(
            f"|eta - actual| / actual: median {statistics.median(errors):.1%}, "
            f"p90 {errors[int(len(errors) * 0.9)]:.1%}, max {errors[-1]:.1%}"
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
