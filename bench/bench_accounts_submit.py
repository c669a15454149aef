"""v2 submit latency with accounting on, beside the same run with SDXL_AUTH=disabled (issue 4).

    .venv/bin/python bench/bench_accounts_submit.py [--clients 32] [--requests 800]

Starts `sdxl-img2img api` as a subprocess (no worker: requests are validated and queued whether
or not one is alive) on a free port with a throwaway key prefix, sends `--requests` v2
submissions of a small PNG from `--clients` concurrent clients, and prints p50/p99 latency and
throughput; then the same with SDXL_AUTH=disabled. Accounting on means a key with a balance and
a rate limit, so every submission runs the rate-limit and credit scripts. The client runs on the
same machine as the API and Redis, so the figures include its share of the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis
from PIL import Image

from app import accounts
from app.contract import Keys
from app.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = REPO_ROOT / ".venv" / "bin" / "sdxl-img2img"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_image() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (128, 96), (180, 40, 40)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def start_api(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(CLI), "api", "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the API exited with code {proc.returncode}")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the API did not answer /healthz within 60 s")


async def load(
    url: str, api_key: str | None, clients: int, requests: int
) -> tuple[list[float], dict[int, int]]:
    body = {
        "image": sample_image(),
        "prompt": "a red square",
        "base_model": "tiny",
        "num_inference_steps": 20,
    }
    headers = {"x-api-key": api_key} if api_key else {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    todo = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for _ in todo:  # one shared iterator: each request is taken by exactly one client
            start = time.perf_counter()
            response = await http.post(url, json=body, headers=headers)
            latencies.append((time.perf_counter() - start) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        for _ in range(clients):  # warm-up: connections, script load, first-call imports
            await http.post(url, json=body, headers=headers)
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, statuses


def run_mode(auth: str, args: argparse.Namespace, redis_url: str) -> str:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url)
    api_key = None
    if auth == "enabled":
        api_key, _ = accounts.create_key(client, keys, name="bench", credits=10**12, rpm=10**9)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "SDXL_REDIS_PREFIX": prefix,
        "SDXL_AUTH": auth,
        "SDXL_DEFAULT_BASE_MODEL": "tiny",
        "SDXL_MAX_QUEUE": str(10**7),
        "SDXL_LOG_LEVEL": "WARNING",
    }
    port = free_port()
    proc = start_api(env, port)
    try:
        start = time.perf_counter()
        latencies, statuses = asyncio.run(
            load(f"http://127.0.0.1:{port}/v2/sdxl-img2img", api_key, args.clients, args.requests)
        )
        elapsed = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for pattern in (f"{prefix}:*", f"rq:*{prefix}.*", f"rq:*:{prefix}*"):
            names = list(client.scan_iter(match=pattern, count=1000))
            if names:
                client.delete(*names)
        client.close()
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    label = "accounting on (balance + rpm)" if auth == "enabled" else "SDXL_AUTH=disabled"
    return (
        f"{label:<31} p50 {statistics.median(ordered):7.1f} ms   p99 {p99:7.1f} ms   "
        f"{len(ordered) / elapsed:7.1f} req/s   statuses {dict(sorted(statuses.items()))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=800)
    args = parser.parse_args()
    redis_url = load_settings().redis_url
    lines = [run_mode(auth, args, redis_url) for auth in ("enabled", "disabled")]
    print(f"v2 submit, {args.clients} concurrent clients, {args.requests} per run, {os.cpu_count()} CPUs")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
