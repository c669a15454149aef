"""The 30 scheduler names (CONTRACT 8): each one produces an image on `tiny`; each job gets a fresh
scheduler built from the model's config; the pipeline's shared scheduler is never touched."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest

from app.core.errors import InvalidInput
from app.core.scheduler_names import SCHEDULER_NAMES, SCHEDULERS
from tests import engine_fixtures as fx
from tests.engine_fixtures import generate_one, pixels
from worker.errors import JobInputError, UnknownScheduler
from worker.schedulers import build_scheduler
from worker.tiny import SCHEDULER

# Session fixtures shared by the engine tests (pytest finds fixtures by name in the module).
engine, one_thread, tiny_dir = fx.engine, fx.one_thread, fx.tiny_dir
pytestmark = fx.QUIET_NUMPY

MODEL_CONFIG = diffusers.EulerDiscreteScheduler(**SCHEDULER).config


def test_there_are_thirty_names():
    assert len(SCHEDULER_NAMES) == 30 == len(set(SCHEDULER_NAMES))


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_each_scheduler_produces_an_image(engine, name):
    steps: list[int] = []
    result = engine.generate(
        [_request(scheduler=name, samples=2)], on_step=lambda s, t: steps.append((s, t))
    )[0]
    images = [pixels(data) for data in result.images]
    assert all(image.shape == (64, 64, 3) for image in images)
    assert all(image.std() > 1 for image in images)  # not a flat (NaN-turned-black) image
    assert not np.array_equal(images[0], images[1])
    assert steps and steps[-1][0] == steps[-1][1]


@pytest.mark.parametrize("name", ["DPM++ SDE", "DPM++ 2M SDE", "Euler a", "DPM2 a Karras", "DPM++ 2S a"])
def test_stochastic_samplers_are_deterministic_per_seed(engine, name):
    first = generate_one(engine, scheduler=name, seed=42)
    assert generate_one(engine, scheduler=name, seed=42).images == first.images
    assert generate_one(engine, scheduler=name, seed=43).images != first.images


def test_sde_sampler_output_i_matches_a_one_sample_run(engine):
    # DPM++ SDE draws its noise from a Brownian tree: seeded per output from the job's seeds.
    both = generate_one(engine, scheduler="DPM++ SDE Karras", seed=10, samples=2)
    second = generate_one(engine, scheduler="DPM++ SDE Karras", seed=11)
    assert np.abs(pixels(both.images[1]) - pixels(second.images[0])).max() <= 3


def test_unknown_name_is_a_typed_400_error(engine):
    with pytest.raises(UnknownScheduler, match="'Euler b'") as info:
        generate_one(engine, scheduler="Euler b")
    assert isinstance(info.value, JobInputError) and isinstance(info.value, InvalidInput)
    assert info.value.status_code == 400


def test_each_job_gets_a_fresh_scheduler_and_the_shared_one_is_untouched(engine):
    pipe = engine.pipelines.get("tiny")
    shared, before = pipe.scheduler, dict(pipe.scheduler.config)
    generate_one(engine, scheduler="DPM++ 2M Karras")
    generate_one(engine, scheduler="Euler a")
    assert pipe.scheduler is shared and dict(pipe.scheduler.config) == before
    assert build_scheduler("Euler", pipe.scheduler.config) is not build_scheduler(
        "Euler", pipe.scheduler.config
    )


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_table_entry_builds_its_class_with_its_overrides(name):
    spec = SCHEDULERS[name]
    scheduler = build_scheduler(name, MODEL_CONFIG)
    assert type(scheduler).__name__ == spec.class_name
    for key, value in spec.overrides.items():
        assert scheduler.config[key] == value, key
    # The model's noise schedule is kept.
    assert scheduler.config["beta_schedule"] == "scaled_linear"
    assert scheduler.config["steps_offset"] == 1


def test_a_model_config_cannot_turn_one_sampler_into_another():
    # e.g. a checkpoint that ships a Karras SDE config: "DPM++ 2M" must still be plain DPM++ 2M.
    shipped = dict(MODEL_CONFIG) | {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}
    plain = build_scheduler("DPM++ 2M", shipped)
    assert plain.config["use_karras_sigmas"] is False
    assert plain.config["algorithm_type"] == "dpmsolver++"
    assert build_scheduler("Euler", shipped).config["use_karras_sigmas"] is False


def _request(**fields):
    from tests.engine_fixtures import input_image, job
    from worker.engine import GenerationRequest

    return GenerationRequest(job(**fields), input_image())
