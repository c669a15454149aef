"""The one generation entry point: a batch of compatible jobs in, one result per job out.

A batch shares what one pipeline call must share (model, scheduler, size, steps, strength, guidance
scale; see `batch_key`); a single job is a batch of one. Every output image has its own
`torch.Generator` seeded with `seed + i`, so output i of a job is what a one-sample job with seed
`seed + i` gives, whatever else runs in the same batch (up to the rounding noise of batched kernels).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image

from app.core.errors import ServiceError
from app.core.job_spec import JobSpec
from app.core.models_config import ModelsConfig
from app.core.settings import Settings
from worker.device import pick_device
from worker.encode import content_type, encode_image
from worker.errors import JobCancelled, PromptTooLong, TooManyDownweightedParts, UnusableOutput
from worker.fast_path import prepare, resolve
from worker.loading import load_pipeline
from worker.output_checks import unusable_output
from worker.pipelines import PipelineCache
from worker.prompt_limits import check_prompt_tokens
from worker.prompts import PromptEmbeddings, PromptEncoder
from worker.schedulers import build_scheduler, scheduler_class


@dataclass(frozen=True)
class GenerationRequest:
    """One job: its validated spec (seed resolved, never -1) and its input image."""

    spec: JobSpec
    image: Image.Image  # RGB at the working resolution (spec.width x spec.height)


@dataclass(frozen=True)
class GenerationResult:
    images: list[bytes]
    content_type: str
    seeds: list[int]
    inference_time: float  # seconds, for the batch the job ran in (model loading excluded)


def batch_key(spec: JobSpec) -> tuple:
    """Jobs with equal keys can run in one pipeline call (what the call itself takes as scalars)."""
    return (
        spec.base_model,
        spec.scheduler,
        spec.width,
        spec.height,
        spec.num_inference_steps,
        spec.strength,
        spec.guidance_scale,
    )


# What the engine answers for one job: its result, or why that job alone was refused (a prompt over
# SDXL_MAX_PROMPT_TOKENS, an output that is not an image); the other jobs of its batch are unaffected.
JobOutcome = GenerationResult | ServiceError

StepCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class Engine:
    def __init__(self, settings: Settings, models: ModelsConfig) -> None:
        self.settings = settings
        self.models = models
        self.device = pick_device(settings)
        self.fast = resolve(settings, self.device)
        self.pipelines = PipelineCache(settings, models, device=self.device, loader=self._load)

    def _load(self, *args: Any, **kwargs: Any) -> StableDiffusionXLImg2ImgPipeline:
        return prepare(load_pipeline(*args, **kwargs), self.fast)

    def warm_up(self, names: list[str]) -> None:
        """Load `names` and run one small generation on each, so that the first job pays neither the
        weights' loading nor the device's first-call costs; with SDXL_COMPILE, one at each of
        SDXL_WARMUP_SIZES, which compiles (or loads from the cache) the kernels of those sizes.
        Every name is tried; then the first failure is raised (the others stay loaded and usable)."""
        failures = self.pipelines.warm_up(names)
        sizes = self.fast.warmup_sizes if self.fast.compiled and self.fast.warmup_sizes else ((64, 64),)
        for name in names:
            if name in failures or name not in self.pipelines.resident():
                continue
            for width, height in sizes:
                self._dry_run(name, width, height)
        if failures:
            raise next(iter(failures.values()))

    def info(self) -> dict[str, Any]:
        """For the worker's heartbeat."""
        return {"device": str(self.device), "resident_models": self.pipelines.resident()}

    def generate(
        self,
        batch: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[JobOutcome]:
        if not batch:
            return []
        first = batch[0].spec
        if any(batch_key(r.spec) != batch_key(first) for r in batch):
            raise ValueError("a batch must share model, scheduler, size, steps, strength and guidance scale")
        scheduler_class(first.scheduler)  # an unknown name fails before any model is loaded
        _check_cancel(should_cancel)
        pipe = self.pipelines.get(first.base_model)

        started = time.perf_counter()
        outcomes: list[list[Image.Image] | ServiceError] = [[] for _ in batch]
        runnable: list[int] = []
        for index, request in enumerate(batch):
            try:  # tokenizers only: an over-long prompt is refused before any encoder runs
                check_prompt_tokens(pipe, request.spec, self.settings.max_prompt_tokens)
                runnable.append(index)
            except (PromptTooLong, TooManyDownweightedParts) as exc:
                outcomes[index] = exc
        with torch.inference_mode():
            encoder = PromptEncoder(pipe, self.device)
            prompts = {
                i: encoder.encode(batch[i].spec.prompt, batch[i].spec.negative_prompt) for i in runnable
            }
            # Prompts of different lengths (in 77-token windows) would have to be padded to run
            # together, and padding changes the image: jobs run in groups of equal length instead.
            groups: dict[int, list[int]] = {}
            for index, embeddings in prompts.items():
                groups.setdefault(embeddings.tokens, []).append(index)
            progress = _Progress(on_step, should_cancel, calls=len(groups))
            for indices in groups.values():
                outputs = self._run(
                    pipe, [batch[i] for i in indices], [prompts[i] for i in indices], progress
                )
                for i, job_outcome in zip(indices, outputs, strict=True):
                    outcomes[i] = job_outcome
                progress.next_call()
        encoded = [
            outcome
            if isinstance(outcome, ServiceError)
            else [encode_image(image, r.spec.output_format, r.spec.output_quality) for image in outcome]
            for r, outcome in zip(batch, outcomes, strict=True)
        ]
        elapsed = time.perf_counter() - started
        return [
            data
            if isinstance(data, ServiceError)
            else GenerationResult(
                images=data,
                content_type=content_type(r.spec.output_format),
                seeds=r.spec.seeds(),
                inference_time=elapsed,
            )
            for r, data in zip(batch, encoded, strict=True)
        ]

    def _run(
        self,
        pipe: StableDiffusionXLImg2ImgPipeline,
        jobs: list[GenerationRequest],
        prompts: list[PromptEmbeddings],
        progress: _Progress,
    ) -> list[list[Image.Image] | ServiceError]:
        """One pipeline call; per job its images, or UnusableOutput if one of them is not an image."""
        spec = jobs[0].spec
        seeds = [seed for job in jobs for seed in job.spec.seeds()]
        repeats = [job.spec.samples for job in jobs]
        view = per_job_pipeline(pipe, build_scheduler(spec.scheduler, pipe.scheduler.config, seeds))

        def stack(field: str) -> torch.Tensor:
            return torch.cat(
                [getattr(p, field).repeat_interleave(n, dim=0) for p, n in zip(prompts, repeats, strict=True)]
            )

        result = view(
            prompt_embeds=stack("embeds"),
            pooled_prompt_embeds=stack("pooled"),
            negative_prompt_embeds=stack("negative_embeds"),
            negative_pooled_prompt_embeds=stack("negative_pooled"),
            image=[_working_image(job) for job, n in zip(jobs, repeats, strict=True) for _ in range(n)],
            strength=spec.strength,
            num_inference_steps=spec.num_inference_steps,
            guidance_scale=spec.guidance_scale,
            generator=[torch.Generator(self.device).manual_seed(seed) for seed in seeds],
            # Floats, not PIL: a NaN is still visible here (PIL would make it a black pixel). The same
            # bytes as "pil", which is this array through the same numpy_to_pil.
            output_type="np",
            callback_on_step_end=progress,
        )
        out: list[list[Image.Image] | ServiceError] = []
        position = 0
        for job, n in zip(jobs, repeats, strict=True):
            decoded: np.ndarray = result.images[position : position + n]
            position += n
            if any(unusable_output(image, job.image) for image in decoded):
                out.append(UnusableOutput())
            else:
                out.append(view.image_processor.numpy_to_pil(decoded))
        return out

    def _dry_run(self, name: str, width: int = 64, height: int = 64) -> None:
        """One short generation through the real path (prompt encoder, fresh scheduler, VAE)."""
        spec = JobSpec(
            request_id="warm-up",
            base_model=name,
            scheduler="Euler",
            prompt="warm up",
            negative_prompt="",
            num_inference_steps=2,
            guidance_scale=2.0,
            strength=0.5,
            samples=1,
            seed=0,
            output_format="png",
            output_quality=95,
            base64=False,
            width=width,
            height=height,
            input_key="",
        )
        self.generate([GenerationRequest(spec, Image.new("RGB", (width, height), (127, 127, 127)))])


def per_job_pipeline(
    pipe: StableDiffusionXLImg2ImgPipeline, scheduler: Any
) -> StableDiffusionXLImg2ImgPipeline:
    """A shallow view of `pipe` with its own scheduler: same weights (no copy), new mutable state.

    Not diffusers' `from_pipe`, which does the same sharing but also inspects signatures, re-registers
    the config and calls `.to(device, dtype)` on every component: measured on tiny, 10 to 14 ms per
    job (and a cast warning per module) against 0.26 ms for this constructor call."""
    view = StableDiffusionXLImg2ImgPipeline(
        **{**pipe.components, "scheduler": scheduler},
        requires_aesthetics_score=pipe.config.requires_aesthetics_score,
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    view.set_progress_bar_config(disable=True)
    return view


def _working_image(job: GenerationRequest) -> Image.Image:
    image = job.image if job.image.mode == "RGB" else job.image.convert("RGB")
    size = (job.spec.width, job.spec.height)
    # The intake already delivers the working resolution; this only guards against a caller that did not.
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def _check_cancel(should_cancel: CancelCheck | None) -> None:
    if should_cancel is not None and should_cancel():
        raise JobCancelled()


class _Progress:
    """diffusers' `callback_on_step_end`: reports `(step, total)` and stops a cancelled job.

    `total` is the number of denoising steps that really run (about strength x steps, over every
    pipeline call of the batch), read from the pipeline once it has set its timesteps.
    """

    def __init__(self, on_step: StepCallback | None, should_cancel: CancelCheck | None, calls: int) -> None:
        self._on_step = on_step
        self._should_cancel = should_cancel
        self._calls = calls
        self._done_before = 0
        self._last = 0

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        per_call = pipe.num_timesteps
        self._last = step + 1
        if self._on_step is not None:
            self._on_step(self._done_before + step + 1, per_call * self._calls)
        _check_cancel(self._should_cancel)
        return kwargs

    def next_call(self) -> None:
        self._done_before += self._last
        self._last = 0


__all__ = ["Engine", "GenerationRequest", "GenerationResult", "JobOutcome", "batch_key", "per_job_pipeline"]
