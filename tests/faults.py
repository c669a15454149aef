"""Helpers for the fault and attack tests: slow jobs, waiting, worker heartbeats and kills, the
HARDENING report lines collected into docs/hardening.md."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from app.core import api_keys, lua_scripts, worker_registry
from app.core.settings import Settings
from tests import image_factory
from tests.stack import Stack

JOB_LOST_S = 8.0
HEARTBEAT_TTL_S = Settings(job_lost_s=JOB_LOST_S).heartbeat_ttl_s  # 2 s for JOB_LOST_S = 8
SCRIPT_NAMES = sorted(
    f.name.removesuffix(".lua")
    for f in resources.files("app.core.lua").iterdir()
    if f.name.endswith(".lua") and not f.name.startswith("_")
)


def slow_job(side: int, steps: int = 100) -> dict[str, Any]:
    """`steps` denoising steps at strength 1 on `tiny`: long enough to be caught mid-job (100 steps at
    512 px take about a minute on this 2-core CPU box, at 256 px about 5 s, at 128 px about 2.5 s;
    on a fast day 2.5x less: 256 px once took 2.0 s, so a test that needs seconds asks for more)."""
    image = base64.b64encode(image_factory.jpeg(side, side)).decode()
    return {
        "image": image,
        "prompt": "slow",
        "base_model": "tiny",
        "num_inference_steps": steps,
        "strength": 1,
    }


def report(name: str, status: Any, seconds: float) -> None:
    """One line per attack or fault, collected into docs/hardening.md (run pytest with -s)."""
    print(f"\nHARDENING | {name} | {status} | {seconds:.3f} s")


def wait_request_end(read: Callable[[], Any], timeout: float = 60, what: str = "the request to end") -> Any:
    """The one "wait until the request ends" of the tests: polls `read` (a status body, or an httpx
    response holding one) until the status is COMPLETED or FAILED, and returns its last value."""

    def ended() -> Any:
        value = read()
        body = value.json() if hasattr(value, "json") else value
        return value if body["status"] in ("COMPLETED", "FAILED") else None

    return wait_until(ended, timeout, what, interval=0.1)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def request_fields(stack: Stack, request_id: str) -> dict[str, str]:
    raw = stack.redis().hgetall(stack.keys.request(request_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def running_worker(stack: Stack, request_id: str, timeout: float, other_than: str | None = None) -> str:
    """Waits until the request is PROCESSING with at least one denoising step done; its worker id."""

    def check() -> str | None:
        fields = request_fields(stack, request_id)
        running = fields.get("status") == "PROCESSING" and int(fields.get("step") or 0) >= 1
        if running and fields.get("worker") and fields["worker"] != other_than:
            return fields["worker"]
        return None

    return wait_until(check, timeout, f"request {request_id} to run (worker other than {other_than})")


def absent_worker(stack: Stack, model: str = "tiny", ttl_s: float = 600) -> str:
    """A worker in the registry of live workers that never takes a job (as one busy for a long
    time would be): v1 then accepts requests for `model` and they wait QUEUED."""
    worker_id = "absent-worker"
    worker_registry.register(stack.redis(), stack.keys, worker_id, [model], ttl_s)
    return worker_id


def heartbeat(stack: Stack, worker_id: str) -> dict[str, Any] | None:
    raw = stack.redis().get(stack.keys.worker(worker_id))
    return json.loads(raw) if raw else None


def kill_worker(stack: Stack, worker_id: str) -> float:
    """SIGKILLs the worker process that holds `worker_id` (its pid is in its heartbeat); returns the
    time of the kill."""
    beat = heartbeat(stack, worker_id)
    assert beat is not None, "a running worker announces itself with a heartbeat key"
    pttl = stack.redis().pttl(stack.keys.worker(worker_id))
    assert 0 < pttl <= HEARTBEAT_TTL_S * 1000, "the heartbeat key expires unless renewed"
    [process] = [p for p in stack.workers if p.pid == beat["pid"]]
    os.kill(process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    process.wait(timeout=10)
    return killed_at


def balance(stack: Stack, key: str) -> int | None:
    return api_keys.get_key(stack.redis(), stack.keys, key).credits


def preload_scripts(stack: Stack) -> None:
    """Loads every Lua script into Redis, so that each call is a single EVALSHA (no NOSCRIPT retry
    for `freeze_after_script` to mistake for the real call)."""
    client = stack.redis()
    for name in SCRIPT_NAMES:
        client.script_load(lua_scripts.load(name).text)


def freeze_after_script(
    stack: Stack,
    pid: int,
    script: str,
    trigger: Callable[[], Any],
    *,
    matches: Callable[[list[str]], bool] = lambda words: True,
    timeout: float = 60,
) -> Any:
    """Watches Redis with MONITOR, runs `trigger` (in a thread), and SIGSTOPs process `pid` the moment
    the Lua script `script` is called with words (keys, args) that `matches` accepts: the process is
    frozen right after that step, before whatever it meant to send next. Returns what `trigger`
    returned (None if it hung on the frozen process; it is left running in its thread)."""
    sha = hashlib.sha1(lua_scripts.load(script).text.encode()).hexdigest()
    outcome: dict[str, Any] = {}

    def run_trigger() -> None:
        with contextlib.suppress(Exception):
            outcome["value"] = trigger()

    with stack.redis().monitor() as monitor:
        thread = threading.Thread(target=run_trigger, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"{script}.lua was not called as expected"
            words = monitor.next_command()["command"].split(" ")
            if words[:2] == ["EVALSHA", sha] and matches(words[2:]):
                os.kill(pid, signal.SIGSTOP)
                break
    thread.join(timeout=3)
    return outcome.get("value")


def kill_frozen(process: subprocess.Popen) -> None:
    """SIGKILL a process left frozen (SIGSTOP) by `freeze_after_script`."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
