"""The README, walked as a newcomer would (issue 11.6): every code block marked `<!-- walk -->`
(the quick start's check, the segmind SDK and the curl examples meant for `make run`) runs as
printed against a real `sdxl-img2img up` stack, from the directory `up` ran in. The only changes
made to a block: the key `make run` printed for its `SG_...` placeholder, and the port. A block that
stops working fails here, so the README cannot drift from the server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REDIS_URL, REPO_ROOT
from tests.stack import free_port
from tests.test_first_run import Up, clean_env

pytestmark = pytest.mark.e2e
MARKED_BLOCK = re.compile(r"<!-- walk -->\s*\n```(bash|python)\n(.*?)\n```", re.DOTALL)


def walked_blocks() -> list[tuple[str, str]]:
    return MARKED_BLOCK.findall((REPO_ROOT / "README.md").read_text())


def test_the_readme_marks_its_examples():
    kinds = [kind for kind, _ in walked_blocks()]
    assert kinds.count("bash") >= 2 and kinds.count("python") >= 1, kinds


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    directory = tmp_path_factory.mktemp("walk")
    prefix = f"walk{os.getpid()}{time.monotonic_ns() % 10**6}"
    env = clean_env(REDIS_URL=REDIS_URL, SDXL_REDIS_PREFIX=prefix, SDXL_DEVICE="cpu")
    running = Up(directory, env, free_port())
    running.curl_line()
    yield running, directory, env
    if running.process.poll() is None:
        os.killpg(running.process.pid, signal.SIGINT)
        running.process.wait(timeout=120)


@pytest.mark.parametrize("index", range(len(walked_blocks())))
def test_walk_block(up, index):
    running, directory, env = up
    kind, text = walked_blocks()[index]
    text = text.replace("SG_...", running.key()).replace("127.0.0.1:8000", f"127.0.0.1:{running.port}")
    command = ["bash", "-euo", "pipefail", "-c", text] if kind == "bash" else [sys.executable, "-c", text]
    result = subprocess.run(
        command, cwd=directory, env={**env, "KEY": running.key()}, capture_output=True, timeout=300
    )
    assert result.returncode == 0, (
        f"README block {index} ({kind}) failed:\n{text}\n--- stdout\n{result.stdout[-2000:]!r}"
        f"\n--- stderr\n{result.stderr[-3000:]!r}"
    )
    if "-o out.jpg" in text or "out.jpg" in text:
        assert (directory / "out.jpg").read_bytes()[:2] == b"\xff\xd8", "out.jpg is an image"
