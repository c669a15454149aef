"""The first run, as a newcomer meets it (issue 11.5): commands work from any directory, `generate`
without a GPU uses `tiny`, `/docs` loads every asset from the API itself (offline), and `up` (what
`make run` starts) reuses its key across restarts, writes the sample image its curl line sends, and
stops on Ctrl-C as on SIGTERM: exit 0, no traceback, no request left PROCESSING."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.core import api_keys
from app.core.redis_keys import RedisKeys
from tests.conftest import REDIS_URL, TEST_CACHE_DIR
from tests.faults import request_fields, slow_job, wait_until
from tests.stack import Stack, free_port, make_stack, sample_image_path
from tests.test_keys_cli import CLI

pytestmark = pytest.mark.e2e


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDXL_") and k not in ("REDIS_URL",)}
    return {
        **env,
        "SDXL_CACHE_DIR": str(TEST_CACHE_DIR),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def test_models_list_and_generate_work_from_any_directory(tmp_path):
    env = clean_env(SDXL_DEVICE="cpu")
    listed = subprocess.run(
        [str(CLI), "models", "list"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^tiny\s+builtin", listed.stdout, re.MULTILINE)
    out = tmp_path / "out.jpg"
    generated = subprocess.run(
        [
            str(CLI),
            "generate",
            "--image",
            str(sample_image_path()),
            "--prompt",
            "p",
            "--num-inference-steps",
            "20",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stderr
    assert "using base model 'tiny'" in generated.stderr
    assert out.read_bytes()[:2] == b"\xff\xd8"


@pytest.fixture(scope="module")
def api_only():
    stack = make_stack()
    stack.start_api()
    yield stack
    stack.stop()


def test_docs_load_every_asset_from_the_api(api_only):
    page = httpx.get(api_only.base_url + "/docs", timeout=30)
    assert page.status_code == 200
    referenced = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    referenced += re.findall(r"""url:\s*['"]([^'"]+)['"]""", page.text)
    assert len(referenced) >= 4, referenced  # stylesheet, icon, script, the OpenAPI document
    for url in referenced:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not served by the API"
        asset = httpx.get(api_only.base_url + url, timeout=30)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert httpx.get(api_only.base_url + "/docs/assets/index.html", timeout=30).status_code == 404


class Up:
    """`sdxl-img2img up` as `make run` starts it, in its own process group as a terminal runs it."""

    def __init__(self, cwd: Path, env: dict[str, str], port: int) -> None:
        self.log = cwd / f"up-{time.monotonic_ns()}.log"
        self.port = port
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "up", "--port", str(port)],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def curl_line(self) -> str:
        def found() -> str | None:
            assert self.process.poll() is None, self.text()[-3000:]
            return next((line for line in self.text().splitlines() if line.startswith("curl ")), None)

        return wait_until(found, 180, "the curl line", interval=0.2)

    def key(self) -> str:
        return re.search(r"API key: (\S+)", self.text()).group(1)

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)  # what the terminal sends to its foreground group
        return self.process.wait(timeout=120)


def test_up_reuses_its_key_and_stops_cleanly_on_ctrl_c(tmp_path):
    prefix = f"up{os.getpid()}{time.monotonic_ns() % 10**6}"
    env = clean_env(REDIS_URL=REDIS_URL, SDXL_REDIS_PREFIX=prefix, SDXL_DEVICE="cpu")
    keys = RedisKeys(prefix)
    port = free_port()
    client = Stack(prefix=prefix, env=env, port=port).redis()
    first = Up(tmp_path, env, port)
    try:
        line = first.curl_line()
        key = first.key()
        assert f"image=@{tmp_path / 'sample.jpg'} " in line and (tmp_path / "sample.jpg").exists()
        assert "--fail-with-body" in line
        # A request in flight when Ctrl-C comes: it finishes (or is handed back), never stays PROCESSING.
        submitted = httpx.post(
            f"http://127.0.0.1:{port}/v2/sdxl-img2img", json=slow_job(128, 60), headers={"x-api-key": key}
        )
        request_id = submitted.json()["request_id"]
        stack_view = Stack(prefix=prefix, env=env, port=port)
        wait_until(
            lambda: request_fields(stack_view, request_id).get("status") == "PROCESSING", 60, "a start"
        )
        assert first.ctrl_c() == 0
    finally:
        if first.process.poll() is None:
            os.killpg(first.process.pid, signal.SIGKILL)
    text = first.text()
    assert "Traceback" not in text, text[-3000:]
    assert request_fields(stack_view, request_id)["status"] != "PROCESSING"

    second = Up(tmp_path, env, port)
    try:
        second.curl_line()
        assert second.key() == key, "the key made before is reused"
        assert [k.name for k in api_keys.list_keys(client, keys)] == ["up"], "no new key per start"
        result = subprocess.run(
            ["bash", "-c", second.curl_line()], cwd=tmp_path, capture_output=True, timeout=120
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert (tmp_path / "out.jpg").read_bytes()[:2] == b"\xff\xd8"
        assert second.ctrl_c() == 0
    finally:
        if second.process.poll() is None:
            os.killpg(second.process.pid, signal.SIGKILL)
    assert "Traceback" not in second.text()
