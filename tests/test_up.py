"""`sdxl-img2img up` (what `make run` starts): with no Redis answering at REDIS_URL it starts a
private one, brings up a worker and the API, and the curl line it prints returns an image."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, TEST_CACHE_DIR
from tests.stack import free_port

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(shutil.which("curl") is None, reason="the printed line is a curl command")
def test_up_prints_a_key_and_a_curl_line_that_returns_an_image(tmp_path):
    port, nothing_listens = free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{nothing_listens}/0",
        "SDXL_CACHE_DIR": str(TEST_CACHE_DIR),
        "SDXL_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("SDXL_DEFAULT_BASE_MODEL", None)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        curl_line = None
        while time.monotonic() < deadline and curl_line is None:
            assert up.poll() is None, log.read_text()[-2000:]
            curl_line = next(
                (line for line in log.read_text().splitlines() if line.startswith("curl ")), None
            )
            time.sleep(0.2)
        assert curl_line, log.read_text()[-2000:]
        text = log.read_text()
        assert "started a private one" in text
        assert re.search(r"API key: SG_[0-9a-f]{32}\s", text)
        result = subprocess.run(["bash", "-c", curl_line], cwd=tmp_path, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode()
        assert b"200 OK" in result.stdout
        image = Image.open(io.BytesIO((tmp_path / "out.jpg").read_bytes()))
        assert image.format == "JPEG" and image.size == (512, 384)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    # Its worker, API and private Redis went with it.
    time.sleep(0.5)
    leftovers = subprocess.run(
        ["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == []
