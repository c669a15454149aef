"""The generation entry point on `tiny`, on the CPU: determinism, seeds, strength, prompts, progress,
cancellation, batching and output encoding (CONTRACT 3b)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.job_spec import SEED_MODULUS
from tests import engine_fixtures as fx
from tests.engine_fixtures import SIZE, generate_one, input_image, job, pixels
from worker.engine import GenerationRequest, batch_key
from worker.errors import JobCancelled
from worker.tiny import load_tokenizer

# Session fixtures shared by the engine tests (pytest finds fixtures by name in the module).
engine, one_thread, tiny_dir = fx.engine, fx.one_thread, fx.tiny_dir
pytestmark = fx.QUIET_NUMPY


def test_same_job_twice_gives_identical_bytes(engine):
    first = generate_one(engine, output_format="jpeg")
    second = generate_one(engine, output_format="jpeg")
    assert first.images == second.images
    assert first.content_type == "image/jpeg"
    assert first.seeds == [1234]
    assert first.inference_time > 0


def test_another_seed_gives_other_bytes(engine):
    assert generate_one(engine, seed=1).images != generate_one(engine, seed=2).images


def test_output_has_the_working_resolution(engine):
    image = input_image().resize((80, 48))
    result = generate_one(engine, image=image, width=80, height=48)
    assert Image.open(io.BytesIO(result.images[0])).size == (80, 48)


def test_four_samples_are_distinct_and_each_matches_a_one_sample_run(engine):
    result = generate_one(engine, samples=4, seed=77)
    assert result.seeds == [77, 78, 79, 80]
    assert len(set(result.images)) == 4
    for i, seed in enumerate(result.seeds):
        alone = generate_one(engine, samples=1, seed=seed)
        # Batched kernels may round differently: a small tolerance, far below what another seed gives.
        assert np.abs(pixels(alone.images[0]) - pixels(result.images[i])).max() <= 3
    other_seed = np.abs(pixels(result.images[0]) - pixels(result.images[1])).mean()
    assert other_seed > 5


def test_seeds_wrap_modulo_2_64_and_huge_seeds_work(engine):
    top = SEED_MODULUS - 1
    result = generate_one(engine, samples=2, seed=top)
    assert result.seeds == [top, 0]
    assert result.images[0] != result.images[1]
    wrapped = generate_one(engine, samples=1, seed=0)
    assert np.abs(pixels(wrapped.images[0]) - pixels(result.images[1])).max() <= 3


def _vae_round_trip(engine, image: Image.Image) -> np.ndarray:
    """The input as `tiny` sees it: encoded and decoded by its (random) VAE, no denoising."""
    pipe = engine.pipelines.get("tiny")
    with torch.inference_mode():
        x = pipe.image_processor.preprocess(image)
        latents = pipe.vae.encode(x).latent_dist.mode()
        decoded = pipe.vae.decode(latents).sample
    out = pipe.image_processor.postprocess(decoded, output_type="np")[0]
    return (out * 255).round().astype(np.int16)


def test_low_strength_stays_nearer_the_input_than_full_strength(engine):
    # tiny's VAE has random weights, so no output resembles the input pixels themselves; what
    # strength controls is how much of the encoded input survives, i.e. the distance to the
    # input's own VAE round trip.
    image = input_image()
    reference = _vae_round_trip(engine, image)
    distances = {
        strength: np.abs(
            pixels(generate_one(engine, image=image, strength=strength).images[0]) - reference
        ).mean()
        for strength in (0.1, 1.0)
    }
    assert distances[0.1] < 0.75 * distances[1.0], distances


def _tokens(text: str) -> int:
    return len(load_tokenizer()(text).input_ids)


def test_a_word_after_the_77th_token_changes_the_image(engine):
    long_prompt = ", ".join(["a photo of a cat sitting on a wooden table next to a window"] * 7)
    assert _tokens(long_prompt) > 80
    one = generate_one(engine, prompt=long_prompt + ", red")
    other = generate_one(engine, prompt=long_prompt + ", castle")
    assert one.images != other.images


def test_weight_one_is_the_plain_word_and_other_weights_differ(engine):
    plain = generate_one(engine, prompt="a photo of a cat on a table")
    weight_one = generate_one(engine, prompt="a photo of a (cat:1.0) on a table")
    heavier = generate_one(engine, prompt="a photo of a (cat:1.5) on a table")
    assert weight_one.images == plain.images
    assert heavier.images != plain.images


def test_negative_prompt_weights_count_too(engine):
    plain = generate_one(engine, negative_prompt="blurry")
    weighted = generate_one(engine, negative_prompt="(blurry:1.4)")
    assert generate_one(engine, negative_prompt="(blurry:1.0)").images == plain.images
    assert weighted.images != plain.images


def test_on_step_reports_increasing_steps_up_to_the_real_total(engine):
    calls: list[tuple[int, int]] = []
    engine.generate(
        [GenerationRequest(job(strength=0.5), input_image())], on_step=lambda s, t: calls.append((s, t))
    )
    steps = [s for s, _ in calls]
    assert steps == list(range(1, len(calls) + 1))
    total = calls[-1][1]
    assert all(t == total for _, t in calls)
    assert steps[-1] == total == 10  # strength x steps for UniPC


def test_should_cancel_stops_the_job_between_steps(engine):
    seen: list[int] = []

    def cancel_after_three() -> bool:
        return len(seen) >= 3

    with pytest.raises(JobCancelled) as info:
        engine.generate(
            [GenerationRequest(job(), input_image())],
            on_step=lambda s, t: seen.append(s),
            should_cancel=cancel_after_three,
        )
    assert info.value.message == "cancelled"
    assert seen == [1, 2, 3]


def test_a_job_cancelled_before_it_starts_never_runs(engine):
    seen: list[int] = []
    with pytest.raises(JobCancelled):
        engine.generate(
            [GenerationRequest(job(), input_image())],
            on_step=lambda s, t: seen.append(s),
            should_cancel=lambda: True,
        )
    assert seen == []


def test_a_batch_of_two_jobs_matches_each_job_alone(engine):
    a = job(prompt="a red house", seed=5, samples=2, output_format="png")
    b = job(prompt="a blue car", seed=9, samples=1, output_format="webp", output_quality=80)
    assert batch_key(a) == batch_key(b)
    ra, rb = engine.generate([GenerationRequest(a, input_image()), GenerationRequest(b, input_image())])
    assert (ra.seeds, rb.seeds) == ([5, 6], [9])
    assert (ra.content_type, rb.content_type) == ("image/png", "image/webp")
    alone_a = generate_one(engine, prompt="a red house", seed=5, samples=2)
    for x, y in zip(ra.images, alone_a.images, strict=True):
        assert np.abs(pixels(x) - pixels(y)).max() <= 3


def test_a_batch_mixing_prompt_lengths_gives_each_job_its_own_image(engine):
    long_prompt = ", ".join(["a photo of a cat sitting on a wooden table next to a window"] * 7)
    short, long = job(prompt="a cat", seed=3), job(prompt=long_prompt, seed=3)
    steps: list[tuple[int, int]] = []
    rs, rl = engine.generate(
        [GenerationRequest(short, input_image()), GenerationRequest(long, input_image())],
        on_step=lambda s, t: steps.append((s, t)),
    )
    assert (
        np.abs(pixels(rs.images[0]) - pixels(generate_one(engine, prompt="a cat", seed=3).images[0])).max()
        <= 3
    )
    assert (
        np.abs(
            pixels(rl.images[0]) - pixels(generate_one(engine, prompt=long_prompt, seed=3).images[0])
        ).max()
        <= 3
    )
    # Two pipeline calls, one progress sequence.
    assert [s for s, _ in steps] == list(range(1, 21)) and steps[-1][1] == 20


def test_incompatible_jobs_are_refused_as_a_batch(engine):
    with pytest.raises(ValueError, match="batch"):
        engine.generate(
            [
                GenerationRequest(job(strength=0.5), input_image()),
                GenerationRequest(job(strength=0.6), input_image()),
            ]
        )


@pytest.mark.parametrize("fmt, magic", [("jpeg", b"\xff\xd8\xff"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_output_formats(engine, fmt, magic):
    result = generate_one(engine, output_format=fmt, output_quality=90)
    assert result.images[0].startswith(magic)
    assert result.content_type == f"image/{fmt}"
    assert Image.open(io.BytesIO(result.images[0])).size == (SIZE, SIZE)


def test_output_quality_changes_the_jpeg(engine):
    low = generate_one(engine, output_format="jpeg", output_quality=10).images[0]
    high = generate_one(engine, output_format="jpeg", output_quality=100).images[0]
    assert len(low) < len(high)
