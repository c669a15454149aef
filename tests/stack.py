"""The running stack for end-to-end tests: real API and worker subprocesses on a real Redis, with a
unique key prefix, on `tiny`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from app.core import api_keys, worker_registry
from app.core.redis_keys import RedisKeys
from tests.conftest import REDIS_URL, REPO_ROOT, TEST_CACHE_DIR

LOG_DIR = REPO_ROOT / ".cache" / "test-logs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    prefix: str
    env: dict[str, str]
    port: int
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.prefix)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["REDIS_URL"])

    def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None, module: str = "app.cli"
    ) -> subprocess.Popen:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = open(LOG_DIR / f"{self.prefix}-{name}-{uuid.uuid4().hex[:4]}.log", "wb")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**self.env, **(env or {})},
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_api(self, processes: int = 1) -> None:
        """`processes` > 1: `api --workers N` (uvicorn's supervisor and N processes on one port)."""
        extra = ("--workers", str(processes)) if processes > 1 else ()
        self.api = self._spawn("api", "api", "--port", str(self.port), *extra)
        self.wait_for(lambda: self._get("/healthz") == 200, "the API to answer")

    def stop_api(self) -> None:
        self.api.send_signal(signal.SIGTERM)
        self.api.wait(timeout=30)

    def start_worker(
        self,
        models: str = "tiny",
        env: dict[str, str] | None = None,
        wait: bool = True,
        module: str = "app.cli",
    ):
        """`module`: what `python -m` runs, the `sdxl-img2img` command (app.cli) or a wrapper of it."""
        before = self.live_workers()
        process = self._spawn("worker", "worker", "--models", models, env=env, module=module)
        self.workers.append(process)
        if wait:
            self.wait_for(
                lambda: self.live_workers() > before, "the worker to be ready", timeout=120, process=process
            )
        return process

    def live_workers(self) -> int:
        return len(worker_registry.live_workers(self.redis(), self.keys))

    def _get(self, path: str) -> int | None:
        try:
            return httpx.get(self.base_url + path, timeout=2).status_code
        except httpx.HTTPError:
            return None

    def wait_for(
        self, predicate, what: str, timeout: float = 60, process: subprocess.Popen | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for proc in [process or self.api, *self.workers]:
                if proc is not None and proc.poll() is not None and proc in (process, self.api):
                    raise RuntimeError(f"a process exited while waiting for {what} (code {proc.returncode})")
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    def create_key(self, **options) -> str:
        key, _ = api_keys.create_key(self.redis(), self.keys, name=options.pop("name", "test"), **options)
        return key

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, self.api]:
            if process is None:
                continue
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        client = self.redis()
        for pattern in (f"{self.prefix}:*", f"rq:*{self.prefix}.*"):
            found = list(client.scan_iter(match=pattern, count=1000))
            if found:
                client.delete(*found)


def make_stack(**settings_env: str) -> Stack:
    prefix = f"e{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "SDXL_REDIS_PREFIX": prefix,
        "SDXL_DEFAULT_BASE_MODEL": "tiny",
        "SDXL_MODELS_FILE": str(REPO_ROOT / "models.yaml"),
        "SDXL_CACHE_DIR": str(TEST_CACHE_DIR),
        "SDXL_ALLOW_PRIVATE_URLS": "1",
        "SDXL_DEVICE": os.environ.get("SDXL_DEVICE", "cpu"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # One torch thread per worker: on a small shared CPU, OpenMP threads waiting on each other
        # make a tiny job's time swing by seconds.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        **settings_env,
    }
    return Stack(prefix=prefix, env=env, port=free_port())


def models_file_with_extras(directory: Path) -> Path:
    """models.yaml plus `idle` (builtin tiny, served by no worker: its requests wait QUEUED) and
    `broken` (a source that cannot load: its requests FAIL with the reason)."""
    import yaml

    models = yaml.safe_load((REPO_ROOT / "models.yaml").read_text())
    models["models"]["idle"] = {"source": "builtin:tiny"}
    models["models"]["broken"] = {"source": str(directory / "no-such-model")}
    path = directory / "models.yaml"
    path.write_text(yaml.safe_dump(models))
    return path


def start_full_stack(directory: Path, **settings_env: str) -> Stack:
    """API plus one worker serving `tiny` and `broken`, on models_file_with_extras."""
    stack = make_stack(SDXL_MODELS_FILE=str(models_file_with_extras(directory)), **settings_env)
    stack.start_api()
    stack.start_worker(models="tiny,broken")
    return stack


def sample_image_path() -> Path:
    return REPO_ROOT / "app" / "cli" / "assets" / "sample.jpg"
