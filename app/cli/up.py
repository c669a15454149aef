"""`sdxl-img2img up`: the whole stack for a laptop or a test, in one command.

Redis at REDIS_URL, or a private one when none answers; one worker; `tiny` as the default base model
unless SDXL_DEFAULT_BASE_MODEL says otherwise; the API on --port. Prints a fresh key and a curl line
that works as printed, offline, with the sample image that ships with the project.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run Redis (if needed), a worker and the API together")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for readiness")
    parser.set_defaults(handler=run)


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_private_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit(
            "no Redis answers at REDIS_URL and redis-server is not installed (apt-get install redis-server)"
        )
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_answers(url):
            return process, url
        time.sleep(0.05)
    process.terminate()
    raise SystemExit("the private redis-server did not start")


def wait_ready(base_url: str, timeout_s: float, children: list[subprocess.Popen]) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                raise SystemExit(f"a service exited during start-up (exit code {child.returncode})")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the stack was not ready within {timeout_s:g} s")


def sample_image_path() -> Path:
    return Path(__file__).parent / "assets" / "sample.jpg"


def run(args: argparse.Namespace) -> int:
    from app.core import api_keys
    from app.core.redis_clients import sync_client
    from app.core.redis_keys import RedisKeys
    from app.core.settings import load_settings

    env = dict(os.environ)
    env.setdefault("SDXL_DEFAULT_BASE_MODEL", "tiny")
    workdir = Path(tempfile.mkdtemp(prefix="sdxl-up-"))
    children: list[subprocess.Popen] = []
    redis_url = env.get("REDIS_URL", "redis://localhost:6379/0")
    if not redis_answers(redis_url):
        redis_process, redis_url = start_private_redis(workdir)
        children.append(redis_process)
        print(f"no Redis answered: started a private one at {redis_url}", flush=True)
    env["REDIS_URL"] = redis_url
    os.environ.update(REDIS_URL=redis_url, SDXL_DEFAULT_BASE_MODEL=env["SDXL_DEFAULT_BASE_MODEL"])
    settings = load_settings()

    cli = [sys.executable, "-m", "app.cli"]
    worker_models = env.get("SDXL_WORKER_MODELS") or settings.default_base_model
    children.append(subprocess.Popen([*cli, "worker", "--models", worker_models], env=env))
    children.append(subprocess.Popen([*cli, "api", "--host", args.host, "--port", str(args.port)], env=env))

    def stop(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        base_url = f"http://{host}:{args.port}"
        wait_ready(base_url, args.ready_timeout, children)
        header = ""
        if settings.auth == "enabled":
            client = sync_client(settings)
            key, _ = api_keys.create_key(
                client, RedisKeys(settings.redis_prefix), name=f"up-{int(time.time())}"
            )
            header = f" -H 'x-api-key: {key}'"
            print(f"\nAPI key: {key}")
        print(f"API: {base_url}  (docs: {base_url}/docs, Redis: {urlparse(redis_url).netloc})")
        print(f"Playground: {base_url}/  (open it in a browser; it asks for the key)")
        print("Try it:\n")
        print(
            f"curl -sS -X POST {base_url}/v1/sdxl-img2img{header} -F image=@{sample_image_path()} "
            f"-F 'prompt=a watercolor painting of a lighthouse' -F base_model={settings.default_base_model} "
            "-o out.jpg -D - && echo 'saved out.jpg'\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()
