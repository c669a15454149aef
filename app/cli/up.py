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
from typing import Any
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


def write_sample_image(directory: Path) -> Path:
    """The sample image, written into `directory` (the current one) as `sample.jpg` so that the
    printed curl line and the README's examples (`-F image=@sample.jpg`) find it; the shipped copy
    when the directory cannot be written."""
    target = directory / "sample.jpg"
    try:
        if not target.exists():
            shutil.copyfile(sample_image_path(), target)
        return target
    except OSError:
        return sample_image_path()


def the_key(client: Any, keys: Any, key_file: Path) -> str:
    """The key `up` made before when it still works (a Redis that kept its data), else a new one,
    kept in `key_file` (mode 600) for the next start: restarts do not pile up unlimited keys."""
    from app.core import api_keys
    from app.core.errors import NotFound

    try:
        saved = key_file.read_text().strip()
    except OSError:
        saved = ""
    if saved:
        try:
            if not api_keys.get_key(client, keys, saved).disabled:
                return saved
        except NotFound:
            pass
    key, _ = api_keys.create_key(client, keys, name="up")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    return key


def run(args: argparse.Namespace) -> int:
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
    # Each child in its own process group: a Ctrl-C in the terminal reaches `up` alone, which then
    # stops them as SIGTERM does (the job in flight finishes), not the children half-way each.
    children.append(subprocess.Popen([*cli, "worker", "--models", worker_models], env=env, process_group=0))
    children.append(
        subprocess.Popen(
            [*cli, "api", "--host", args.host, "--port", str(args.port)], env=env, process_group=0
        )
    )

    def stop(*_: object) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the stop short
            signal.signal(signum, signal.SIG_IGN)
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C stops as SIGTERM does: exit 0
        signal.signal(signum, lambda *_: sys.exit(0))
    try:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        base_url = f"http://{host}:{args.port}"
        wait_ready(base_url, args.ready_timeout, children)
        print_welcome(base_url, settings, redis_url)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


def print_welcome(base_url: str, settings: Any, redis_url: str) -> None:
    """Where everything is, the key, and a curl line that works as printed (on the sample image)."""
    from app.core.redis_clients import sync_client
    from app.core.redis_keys import RedisKeys

    header = ""
    if settings.auth == "enabled":
        key_file = Path(settings.cache_dir).expanduser() / f"up-key.{settings.redis_prefix}"
        key = the_key(sync_client(settings), RedisKeys(settings.redis_prefix), key_file)
        header = f" -H 'x-api-key: {key}'"
        print(f"\nAPI key: {key}")
    print(f"API: {base_url}  (docs: {base_url}/docs, Redis: {urlparse(redis_url).netloc})")
    print(f"Playground: {base_url}/  (open it in a browser; it asks for the key)")
    sample = write_sample_image(Path.cwd())
    print(f"Sample image: {sample}")
    print("Try it:\n")
    print(
        f"curl -sS --fail-with-body -X POST {base_url}/v1/sdxl-img2img{header} -F image=@{sample} "
        f"-F 'prompt=a watercolor painting of a lighthouse' -F base_model={settings.default_base_model} "
        "-o out.jpg -D - && echo 'saved out.jpg'\n",
        flush=True,
    )
