"""The one JobSpec factory of the tests: a valid spec with every field set, changed by keywords."""

from dataclasses import replace

from app.core.job_spec import JobSpec

_BASE = JobSpec(
    request_id="test",
    base_model="tiny",
    scheduler="UniPC",
    prompt="a photo of a cat sitting on a table",
    negative_prompt="blurry, low quality",
    num_inference_steps=20,
    guidance_scale=6.5,
    strength=0.5,
    samples=1,
    seed=1234,
    output_format="png",
    output_quality=95,
    base64=False,
    width=64,
    height=64,
    input_key="",
)


def make_spec(**fields: object) -> JobSpec:
    return replace(_BASE, **fields)
