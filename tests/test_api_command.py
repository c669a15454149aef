"""`sdxl-img2img api --workers N`: N uvicorn processes, each with its own app from the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REDIS_URL, REPO_ROOT
from tests.stack import free_port

pytestmark = pytest.mark.e2e


def messages(log, text: str) -> int:
    """How many JSON log lines have a message starting with `text`."""
    return log.read_text().count(f'"msg": "{text}')


def test_api_with_two_worker_processes_serves_and_stops(tmp_path, redis_prefix):
    port = free_port()
    env = {**os.environ, "REDIS_URL": REDIS_URL, "SDXL_REDIS_PREFIX": redis_prefix, "SDXL_AUTH": "disabled"}
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port), "--workers", "2"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while messages(log, "Application startup complete") < 2 and time.monotonic() < deadline:
            assert api.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        assert messages(log, "Started server process") == 2
        for _ in range(4):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json() == {"status": "ok"}
    finally:
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=30) == 0
