"""/readyz and /metrics against a Redis holding many unrelated keys (run by hand:
`.venv/bin/python bench/bench_registry.py`). Prints medians, asserts nothing.

A private redis-server on a free port (so that its keyspace is only what the bench writes), a real
API and one `tiny` worker (tests/stack.py). Each endpoint is timed with an empty keyspace, then with
300,000 unrelated keys. For comparison, the read these endpoints did before the registry (a SCAN of
the keyspace for the workers' heartbeat keys) is timed on the same Redis.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.core import worker_registry
from tests.stack import free_port, make_stack

UNRELATED_KEYS = 300_000
ROUNDS = 40


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return process, url
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def median_ms(call, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(stack, http: httpx.Client) -> dict[str, float]:
    client = stack.redis()
    pattern = f"{stack.prefix}:worker:*"
    return {
        "/readyz": median_ms(lambda: http.get("/readyz").raise_for_status()),
        "/metrics": median_ms(lambda: http.get("/metrics").raise_for_status()),
        "registry read": median_ms(lambda: worker_registry.live_workers(client, stack.keys)),
        "SCAN (before)": median_ms(lambda: list(client.scan_iter(match=pattern, count=500)), rounds=10),
    }


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    server, url = start_redis(directory)
    stack = make_stack(REDIS_URL=url)
    stack.env["REDIS_URL"] = url
    try:
        stack.start_api()
        stack.start_worker()
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            empty = measure(stack, http)
            client = stack.redis()
            for start in range(0, UNRELATED_KEYS, 10_000):
                with client.pipeline(transaction=False) as pipe:
                    for i in range(start, start + 10_000):
                        pipe.set(f"unrelated:{i}", "x")
                    pipe.execute()
            full = measure(stack, http)
        print(f"median ms over {ROUNDS} calls; keyspace: {client.dbsize()} keys after the fill")
        print(f"{'':16} {'empty':>10} {f'+{UNRELATED_KEYS:,} keys':>16}")
        for name in empty:
            print(f"{name:16} {empty[name]:10.2f} {full[name]:16.2f}")
    finally:
        stack.stop()
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
