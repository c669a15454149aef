"""The one GPU benchmark (issue 12): `bash bench/run_gpu.sh` on a GPU box, `--smoke` on any CPU.

The seed's request (1024x1024, 30 steps, strength 0.65, CFG 6.5, UniPC) on `sdxl-random` (the full
SDXL architecture, random weights, built locally: no network) or on the models.yaml entry named by
`--model`. Prints one table, each figure of ours beside plain diffusers measured in the same run on
the same device (StableDiffusionXLImg2ImgPipeline as loaded, fp16 on CUDA, SDPA, no compile, one
request at a time), with the ratio:

- latency p50/p90 at batch 1 through the engine (the worker's x-generation-time) and through the
  whole stack (API + Redis + worker, v1 wall time);
- images/s with 8 concurrent clients, batching on (SDXL_MAX_BATCH 4) and off (1);
- cold start: a worker's spawn to its first image, with an empty compile cache and with a warm one;
- resident-model switch: extra time of a request for the other resident model;
- peak GPU memory (the worker: two models resident).

`--smoke`: the same code on the CPU with `tiny` at 64x64, compile off, few runs (seconds; CI runs it).
Prints figures, asserts nothing but that each request answered 200.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import image_factory
from tests.conftest import REPO_ROOT, TEST_CACHE_DIR
from tests.stack import Stack, make_stack

SLUG = "sdxl-img2img"
CONCURRENCY = 8


@dataclass(frozen=True)
class Plan:
    model_source: dict  # the models.yaml entry served as `bench_a` and `bench_b`
    device: str
    size: int
    steps: int
    runs: int
    requests: int  # for the throughput figures, sent by CONCURRENCY clients
    compile: str


def plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        return Plan({"source": "builtin:tiny"}, "cpu", 64, 30, 3, CONCURRENCY, "off")
    if args.model == "sdxl-random":
        entry = {"source": "builtin:sdxl-random"}
    else:
        entry = yaml.safe_load((REPO_ROOT / "models.yaml").read_text())["models"][args.model]
    return Plan(entry, "cuda", 1024, 30, args.runs, 2 * CONCURRENCY, args.compile)


def body(p: Plan, image: str, seed: int, model: str = "bench_a") -> dict:
    return {
        "image": image,
        "prompt": "a lighthouse on a cliff at dusk, dramatic sky",
        "base_model": model,
        "num_inference_steps": p.steps,
        "strength": 0.65,
        "guidance_scale": 6.5,
        "scheduler": "UniPC",
        "seed": seed,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- plain diffusers, in this process ---------------------------------------------------------------


def plain_diffusers(p: Plan) -> dict[str, float | None]:
    import torch
    from diffusers import UniPCMultistepScheduler

    from app.core.models_config import ModelEntry
    from app.core.settings import Settings
    from worker.device import pick_dtype
    from worker.loading import load_pipeline

    device = torch.device(p.device)
    entry = ModelEntry(**p.model_source)
    settings = Settings(_env_file=None, cache_dir=str(TEST_CACHE_DIR), device=p.device)
    picture = Image.open(io.BytesIO(image_factory.jpeg(p.size, p.size))).convert("RGB")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    pipe = load_pipeline("plain", entry, settings=settings, device=device, dtype=pick_dtype(device, entry))

    def call(pipe, seed: int) -> float:
        t0 = time.perf_counter()
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        pipe(
            prompt="a lighthouse on a cliff at dusk, dramatic sky",
            image=picture,
            strength=0.65,
            num_inference_steps=p.steps,
            guidance_scale=6.5,
            generator=torch.Generator(device).manual_seed(seed),
        )
        sync()
        return time.perf_counter() - t0

    call(pipe, 0)
    cold = time.perf_counter() - started
    latencies = [call(pipe, seed) for seed in range(1, p.runs + 1)]
    t0 = time.perf_counter()
    for seed in range(p.requests):
        call(pipe, seed)
    throughput = p.requests / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    # A switch, the diffusers way of holding two models on one device: the other one moves in.
    pipe.to("cpu")
    sync()
    t0 = time.perf_counter()
    pipe.to(device)
    sync()
    switch = time.perf_counter() - t0
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "p50": statistics.median(latencies),
        "p90": pct(latencies, 0.9),
        "throughput": throughput,
        "cold": cold,
        "switch": switch,
        "peak": peak,
    }


# --- ours, through the whole stack -----------------------------------------------------------------


def start_worker_timed(stack: Stack, key: str, p: Plan, image: str, env: dict[str, str]) -> float:
    """Seconds from the worker's spawn to its first image (a v1 request sent at once waits for it)."""
    started = time.perf_counter()
    stack.start_worker(models="bench_a,bench_b", env=env, wait=False)
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=900) as http:
        while True:
            response = http.post(f"/v1/{SLUG}", json=body(p, image, 0))
            if response.status_code == 200:
                return time.perf_counter() - started
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"no first image: {response.status_code} {response.text[:200]}")
            time.sleep(0.2)  # 503 until a live worker serves the model


def v1(http: httpx.Client, payload: dict) -> tuple[float, float]:
    t0 = time.perf_counter()
    response = http.post(f"/v1/{SLUG}", json=payload)
    wall = time.perf_counter() - t0
    assert response.status_code == 200, response.text[:300]
    return wall, float(response.headers["x-generation-time"])


def throughput(stack: Stack, key: str, p: Plan, image: str) -> float:
    def client(n: int) -> None:
        with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=900) as http:
            for i in range(p.requests // CONCURRENCY):
                v1(http, body(p, image, 1000 * n + i))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(client, range(CONCURRENCY)))
    return p.requests / (time.perf_counter() - t0)


def peak_memory(stack: Stack) -> int | None:
    from app.core import worker_registry

    client = stack.redis()
    for worker_id in worker_registry.live_workers(client, stack.keys):
        raw = client.get(stack.keys.worker(worker_id))
        if raw:
            return json.loads(raw).get("gpu_peak_memory_bytes")
    return None


def stop_workers(stack: Stack) -> None:
    for process in stack.workers:
        process.terminate()
        process.wait(timeout=120)
    stack.workers.clear()
    stack.wait_for(lambda: stack.live_workers() == 0, "the workers to leave", timeout=60)


def ours(p: Plan, work: Path) -> dict[str, float | None]:
    models = work / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {"bench_a": p.model_source, "bench_b": p.model_source}}))
    cache = work / "compile"
    stack = make_stack(
        SDXL_MODELS_FILE=str(models),
        SDXL_DEFAULT_BASE_MODEL="bench_a",
        SDXL_DEVICE=p.device,
        SDXL_COMPILE=p.compile,
        SDXL_COMPILE_CACHE_DIR=str(cache),
        SDXL_WARMUP_SIZES=f"{p.size}x{p.size}",
        SDXL_MAX_RESIDENT_MODELS="2",
        SDXL_SYNC_TIMEOUT_S="900",
        SDXL_MAX_QUEUE="100000",
    )
    image = base64.b64encode(image_factory.jpeg(p.size, p.size)).decode()
    out: dict[str, float | None] = {}
    try:
        stack.start_api()
        key = stack.create_key(name="bench")
        out["cold"] = start_worker_timed(stack, key, p, image, {"SDXL_MAX_BATCH": "4"})
        with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=900) as http:
            runs = [v1(http, body(p, image, seed)) for seed in range(1, p.runs + 1)]
            walls, engine = [w for w, _ in runs], [g for _, g in runs]
            out |= {
                "stack_p50": statistics.median(walls),
                "stack_p90": pct(walls, 0.9),
                "engine_p50": statistics.median(engine),
                "engine_p90": pct(engine, 0.9),
            }
            # Each of these asks for the other model than the request before it (both resident).
            models = ["bench_b", "bench_a", "bench_b", "bench_a"]
            switched = [v1(http, body(p, image, 50 + i, model))[1] for i, model in enumerate(models)]
            out["switch"] = max(0.0, statistics.median(switched) - out["engine_p50"])
        out["batched"] = throughput(stack, key, p, image)
        out["peak"] = peak_memory(stack)
        stop_workers(stack)
        out["cold_cached"] = start_worker_timed(stack, key, p, image, {"SDXL_MAX_BATCH": "1"})
        out["unbatched"] = throughput(stack, key, p, image)
    finally:
        stack.stop()
    return out


# --- the table -------------------------------------------------------------------------------------


def table(p: Plan, mine: dict, plain: dict) -> str:
    def seconds(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"

    def rate(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} img/s"

    def gib(v: float | None) -> str:
        return "n/a" if v is None else f"{v / 2**30:.1f} GiB"

    rows = [
        ("latency p50, engine, batch 1", seconds, mine["engine_p50"], plain["p50"]),
        ("latency p90, engine, batch 1", seconds, mine["engine_p90"], plain["p90"]),
        ("latency p50, whole stack (v1)", seconds, mine["stack_p50"], plain["p50"]),
        ("latency p90, whole stack (v1)", seconds, mine["stack_p90"], plain["p90"]),
        (f"images/s, {CONCURRENCY} clients, batching on", rate, mine["batched"], plain["throughput"]),
        (f"images/s, {CONCURRENCY} clients, batching off", rate, mine["unbatched"], plain["throughput"]),
        ("cold start to first image, no compile cache", seconds, mine["cold"], plain["cold"]),
        ("cold start to first image, compile cache", seconds, mine["cold_cached"], plain["cold"]),
        ("resident-model switch", seconds, mine["switch"], plain["switch"]),
        ("peak GPU memory (ours: 2 models resident)", gib, mine["peak"], plain["peak"]),
    ]
    source = p.model_source["source"]
    head = (
        f"{source}, {p.size}x{p.size}, {p.steps} steps, strength 0.65, CFG 6.5, UniPC, on {p.device}, "
        f"SDXL_COMPILE={p.compile}; plain = diffusers StableDiffusionXLImg2ImgPipeline, no compile"
    )
    lines = [head, f"| {'figure':46} | {'ours':>12} | {'plain diffusers':>15} | {'ratio':>6} |"]
    lines.append(f"|{'-' * 48}|{'-' * 14}|{'-' * 17}|{'-' * 8}|")
    for label, fmt, value, base in rows:
        ratio = f"{value / base:.2f}" if value is not None and base else "n/a"
        lines.append(f"| {label:46} | {fmt(value):>12} | {fmt(base):>15} | {ratio:>6} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny, 64x64, compile off: seconds")
    parser.add_argument("--model", default="sdxl-random", help="sdxl-random or a models.yaml entry")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--compile", default="default", choices=["off", "default", "max-autotune"])
    p = plan(parser.parse_args())
    started = time.perf_counter()
    plain = plain_diffusers(p)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        mine = ours(p, Path(work))
    print(table(p, mine, plain))
    print(f"(benchmark wall time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
