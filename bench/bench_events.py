"""Live status delay benchmark (run by hand: `.venv/bin/python bench/bench_events.py`). Prints
figures, asserts nothing.

A real API and worker on `tiny` (tests/stack.py) run requests of 100 denoising steps while an HTTP
client (httpx, streaming) reads `GET /v2/requests/{id}/events`. For each `progress` event, the delay
is the moment the client has parsed it minus the moment the worker's Lua step appended it to the
request's stream: the entry id's milliseconds, Redis's own clock, which the client's clock is
compared with (same machine; the offset is measured with TIME and taken out).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.faults import slow_job
from tests.stack import make_stack

SLUG = "sdxl-img2img"
REQUESTS = 5


def redis_clock_offset_ms(client) -> float:
    """Redis TIME minus this process's clock, in ms (half the round trip either way)."""
    before = time.time()
    seconds, micros = client.time()
    after = time.time()
    return (seconds + micros / 1e6 - (before + after) / 2) * 1000


def progress_delays(http: httpx.Client, request_id: str, offset_ms: float) -> list[float]:
    delays: list[float] = []
    name, event_id = "", ""
    with http.stream("GET", f"/v2/requests/{request_id}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("id:"):
                event_id = line.partition(":")[2].strip()
            elif line == "" and name:
                if name == "progress":
                    written_ms = int(event_id.split("-")[0])
                    delays.append(time.time() * 1000 + offset_ms - written_ms)
                name = ""
    return delays


def main() -> None:
    stack = make_stack()
    try:
        stack.start_api()
        stack.start_worker()
        key = stack.create_key(name="bench")
        offset = statistics.median(redis_clock_offset_ms(stack.redis()) for _ in range(20))
        delays: list[float] = []
        with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=120) as http:
            for _ in range(REQUESTS):
                request_id = http.post(f"/v2/{SLUG}", json=slow_job(128, 100)).json()["request_id"]
                delays += progress_delays(http, request_id, offset)
        delays.sort()
        print(f"progress events: {len(delays)} (clock offset to Redis {offset:+.2f} ms)")
        median, p90 = statistics.median(delays), delays[int(len(delays) * 0.9)]
        print(
            "worker's progress write -> event parsed by the HTTP client: "
            f"median {median:.1f} ms, p90 {p90:.1f} ms, max {delays[-1]:.1f} ms"
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
