"""Peak memory of the API with concurrent hostile input images (issue 10 item 9).

16 clients each POST a ~1.6 KB lossless WebP of 8000x5000 pixels in one colour (with alpha) to v2
at once, against an API subprocess (no worker), and the API's resident memory is sampled (psutil).
Run twice in one go: with the decode budget off (SDXL_DECODE_MEMORY_MB huge: the old behaviour of
unbounded concurrent decodes) and with the default budget. `--old-tree DIR` adds a run of the API
from another checkout (e.g. a `git worktree` of the commit before the bound).

    .venv/bin/python bench/bench_intake_memory.py [--clients 16] [--old-tree DIR]
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.memory_probe import PeakRss
from tests.stack import make_stack

SLUG = "sdxl-img2img"


def hostile_webp() -> str:
    buffer = io.BytesIO()
    Image.new("RGBA", (8000, 5000), (200, 30, 30, 128)).save(buffer, "WEBP", lossless=True)
    return base64.b64encode(buffer.getvalue()).decode()


def run(label: str, image: str, clients: int, old_tree: str | None = None, **env: str) -> None:
    stack = make_stack(**env)
    if old_tree:  # that checkout's own code: run from its directory, ahead of the editable install
        stack.api = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(stack.port)],
            env={**stack.env, "PYTHONPATH": old_tree},
            cwd=old_tree,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.wait_for(lambda: stack._get("/healthz") == 200, "the old API to answer")
    else:
        stack.start_api()
    try:
        key = stack.create_key(name="bench")
        body = {"image": image, "prompt": "p", "base_model": "tiny", "num_inference_steps": 20}

        def submit(_: int) -> int:
            url = f"{stack.base_url}/v2/{SLUG}"
            return httpx.post(url, json=body, headers={"x-api-key": key}, timeout=300).status_code

        time.sleep(1)  # let start-up allocations settle before the baseline
        with PeakRss(stack.api.pid) as memory, ThreadPoolExecutor(clients) as pool:
            started = time.monotonic()
            statuses = collections.Counter(pool.map(submit, range(clients)))
            elapsed = time.monotonic() - started
        time.sleep(2)
        after = PeakRss(stack.api.pid).baseline_mb
        print(
            f"{label:<40} peak RSS {memory.peak_mb:6.0f} MB (baseline {memory.baseline_mb:4.0f}, "
            f"+{memory.growth_mb:5.0f}), 2 s after {after:5.0f} MB, "
            f"answers {dict(statuses)}, {elapsed:5.1f} s"
        )
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--old-tree", help="a checkout of the code before the bound, run as a third case")
    args = parser.parse_args()
    image = hostile_webp()
    print(f"{args.clients} concurrent lossless WebPs of 8000x5000, {len(image) * 3 // 4} bytes each")
    if args.old_tree:
        run("old code (--old-tree)", image, args.clients, old_tree=args.old_tree)
    run("budget off (SDXL_DECODE_MEMORY_MB=1e6)", image, args.clients, SDXL_DECODE_MEMORY_MB="1000000")
    run("budget on (default 1024 MB, wait 5 s)", image, args.clients)


if __name__ == "__main__":
    main()
