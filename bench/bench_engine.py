"""Engine benchmarks on `tiny` (run by hand: `.venv/bin/python bench/bench_engine.py`). Prints figures,
asserts nothing.

- imports (the floor of any worker or `generate` start-up);
- cold build of `tiny` into a fresh cache, and its size on disk;
- engine start-up: Engine() plus warm_up(["tiny"]) (load from the disk cache and one dry run);
- time per job (median and p90 of 30): 64x64, 20 steps, strength 0.65 (13 denoising steps) and 1.0,
  UniPC, guidance 6.5, one sample; then samples=4 in one call;
- the same at torch's default thread count and at one thread (on a shared CPU, OpenMP threads
  that wait on each other can cost more than they bring).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUNS = 30


def main() -> None:
    started = time.perf_counter()
    import torch

    from app.core.job_spec import JobSpec
    from app.core.models_config import ModelEntry, ModelsConfig
    from app.core.settings import Settings
    from tests.engine_fixtures import input_image
    from worker.engine import Engine, GenerationRequest
    from worker.tiny import ensure_tiny

    print(f"imports (torch, diffusers, transformers, compel, engine): {time.perf_counter() - started:.2f} s")
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        built = ensure_tiny(cache)
        build_s = time.perf_counter() - started
        size = sum(f.stat().st_size for f in built.rglob("*") if f.is_file())
        print(f"tiny: cold build {build_s:.2f} s, {size / 1e6:.1f} MB on disk ({built})")

        settings = Settings(cache_dir=cache, device="cpu", default_base_model="tiny")
        models = ModelsConfig(models={"tiny": ModelEntry(source="builtin:tiny")})
        started = time.perf_counter()
        engine = Engine(settings, models)
        engine.warm_up(["tiny"])
        print(f"engine start-up (Engine() + warm_up(['tiny'])): {time.perf_counter() - started:.2f} s")

        def spec(**fields: object) -> JobSpec:
            values: dict[str, object] = {
                "request_id": "bench",
                "base_model": "tiny",
                "scheduler": "UniPC",
                "prompt": "a photo of a cat sitting on a wooden table, highly detailed",
                "negative_prompt": "blurry, low quality",
                "num_inference_steps": 20,
                "guidance_scale": 6.5,
                "strength": 0.65,
                "samples": 1,
                "seed": 1,
                "output_format": "jpeg",
                "output_quality": 95,
                "base64": False,
                "width": 64,
                "height": 64,
                "input_key": "",
            }
            values.update(fields)
            return JobSpec(**values)  # type: ignore[arg-type]

        image = input_image()
        default_threads = torch.get_num_threads()
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            for label, fields in (
                ("strength 0.65", {}),
                ("strength 1.0", {"strength": 1.0}),
                ("strength 0.65, samples=4", {"samples": 4}),
            ):
                times = []
                for i in range(RUNS):
                    started = time.perf_counter()
                    engine.generate([GenerationRequest(spec(seed=i, **fields), image)])
                    times.append(time.perf_counter() - started)
                times.sort()
                median_ms = statistics.median(times) * 1000
                p90_ms = times[int(len(times) * 0.9)] * 1000
                print(
                    f"{threads} thread(s), 64x64, 20 steps, {label}: "
                    f"median {median_ms:.0f} ms, p90 {p90_ms:.0f} ms"
                )
        torch.set_num_threads(default_threads)
        engine_vs_bare(engine, spec, image)


def engine_vs_bare(engine, spec, image) -> None:
    """The engine's own overhead: Engine.generate against a bare diffusers call on the same resident
    pipeline with the same inputs (prompts, UniPC, seed, steps, strength, guidance), one thread,
    interleaved so that both see the same machine load."""
    import torch
    from diffusers import UniPCMultistepScheduler

    from worker.engine import GenerationRequest

    pipe = engine.pipelines.get("tiny")
    torch.set_num_threads(1)
    job = spec(output_format="png")

    def bare(seed: int) -> None:
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            image=image,
            strength=job.strength,
            num_inference_steps=job.num_inference_steps,
            guidance_scale=job.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
        )

    ours, theirs = [], []
    for i in range(RUNS):
        started = time.perf_counter()
        engine.generate([GenerationRequest(spec(seed=i, output_format="png"), image)])
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        bare(i)
        theirs.append(time.perf_counter() - started)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(
        f"engine vs bare diffusers, same pipeline and inputs (64x64, 20 steps, strength 0.65, 1 thread): "
        f"median {a * 1000:.1f} ms vs {b * 1000:.1f} ms, overhead {(a / b - 1) * 100:+.1f}%"
    )


if __name__ == "__main__":
    main()
