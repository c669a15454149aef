"""Loading every source kind, the resident-pipeline cache (LRU, load counts, failures) and the
device/dtype choice, on `tiny` and on sources that cannot load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.models_config import ModelEntry, ModelsConfig
from tests import engine_fixtures as fx
from tests.engine_fixtures import (
    engine_settings,
    generate_one,
    pixels,
    tiny_models,
)
from worker.device import pick_device, pick_dtype
from worker.engine import Engine
from worker.errors import DeviceUnavailable, JobInputError, ModelLoadError, UnknownModel
from worker.pipelines import PipelineCache

# Session fixtures shared by the engine tests (pytest finds fixtures by name in the module).
engine, one_thread, tiny_dir = fx.engine, fx.one_thread, fx.tiny_dir
pytestmark = fx.QUIET_NUMPY


@pytest.fixture(scope="module")
def saved_dir(engine, tmp_path_factory) -> Path:
    """`tiny` written out with save_pretrained, as a user would point models.yaml at a directory."""
    target = tmp_path_factory.mktemp("saved") / "tiny-copy"
    engine.pipelines.get("tiny").save_pretrained(target)
    return target


def test_a_local_diffusers_directory_gives_the_same_image_as_builtin_tiny(engine, saved_dir):
    entry = ModelEntry(source=str(saved_dir))
    assert entry.source_kind == "directory"
    local = Engine(engine_settings(), ModelsConfig(models={"local": entry}))
    from_dir = generate_one(local, base_model="local", seed=99)
    builtin = generate_one(engine, base_model="tiny", seed=99)
    assert from_dir.images == builtin.images
    assert local.pipelines.load_count("local") == 1


def test_a_single_safetensors_file_gives_the_same_image_as_builtin_tiny(engine, tiny_dir, tmp_path):
    # tiny written in the original SDXL single-file layout (as civitai serves checkpoints), read back
    # by from_single_file with tiny's own directory as the layout to map it onto (`config`).
    from safetensors.torch import save_file

    from tests.engine_fixtures import original_sdxl_checkpoint

    path = tmp_path / "tiny-single.safetensors"
    save_file(original_sdxl_checkpoint(engine.pipelines.get("tiny")), str(path))
    entry = ModelEntry(source=str(path), config=str(tiny_dir))
    assert entry.source_kind == "safetensors"
    single = Engine(engine_settings(), ModelsConfig(models={"single": entry}))
    from_file = generate_one(single, base_model="single", seed=7).images[0]
    builtin = generate_one(engine, base_model="tiny", seed=7).images[0]
    # The same weights, bit for bit; but from_single_file places them in memory differently, and
    # the CPU kernels then round a few last bits differently: a pixel level or two at most.
    assert np.abs(pixels(from_file) - pixels(builtin)).max() <= 2


def test_builtin_tiny_is_cached_on_disk_and_small(tiny_dir):
    from worker.tiny import ensure_tiny

    assert ensure_tiny(tiny_dir.parent.parent) == tiny_dir  # built once, found again
    size = sum(f.stat().st_size for f in tiny_dir.rglob("*") if f.is_file())
    assert size < 10_000_000
    assert (tiny_dir / "model_index.json").is_file()


def _failing(source: str, **fields: object) -> Engine:
    return Engine(engine_settings(), tiny_models(broken=ModelEntry(source=source, **fields)))


@pytest.mark.parametrize(
    "source, reason",
    [
        ("/nonexistent/sdxl-model", "does not exist"),
        ("/nonexistent/model.safetensors", "does not exist"),
    ],
)
def test_a_missing_local_source_is_a_typed_error_naming_model_and_reason(source, reason):
    failing = _failing(source)
    with pytest.raises(ModelLoadError) as info:
        generate_one(failing, base_model="broken")
    assert "'broken'" in info.value.message and source in info.value.message and reason in info.value.message
    assert info.value.status_code == 500


def test_a_directory_that_is_not_a_diffusers_model_is_a_typed_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no model_index\.json"):
        _failing(str(tmp_path)).pipelines.get("broken")


def test_a_corrupt_model_directory_is_a_typed_error(saved_dir, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(saved_dir, corrupt)
    for weights in (corrupt / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors at all")
    with pytest.raises(ModelLoadError, match="'broken'") as info:
        _failing(str(corrupt)).pipelines.get("broken")
    assert "Error" in info.value.reason


def test_a_single_file_checkpoint_that_is_not_sdxl_is_a_typed_error(tiny_dir):
    # A .safetensors file goes through from_single_file; tiny's UNet weights alone are not a whole
    # SDXL checkpoint (and `config` keeps diffusers off the network).
    unet_file = next((tiny_dir / "unet").glob("*.safetensors"))
    failing = _failing(str(unet_file), config=str(tiny_dir))
    assert failing.models.models["broken"].source_kind == "safetensors"
    with pytest.raises(ModelLoadError, match=r"'broken'.*(from_single_file|missing)"):
        failing.pipelines.get("broken")


def test_a_failing_model_leaves_the_others_usable_and_fails_every_time():
    failing = _failing("/nonexistent/sdxl-model")
    with pytest.raises(ModelLoadError):
        generate_one(failing, base_model="broken")
    assert generate_one(failing, base_model="tiny").images  # the other model still works
    with pytest.raises(ModelLoadError, match="'broken'"):
        generate_one(failing, base_model="broken")
    assert failing.pipelines.load_attempts("broken") == 1  # remembered for a while: not retried at once
    assert failing.pipelines.resident() == ["tiny"]


def test_a_failed_load_is_tried_again_once_its_memory_expires():
    now = [0.0]
    cache = PipelineCache(
        engine_settings(),
        tiny_models(broken=ModelEntry(source="/nonexistent/sdxl-model")),
        device=torch.device("cpu"),
        failure_ttl_s=30,
        clock=lambda: now[0],
    )
    for expected_attempts, advance in ((1, 29.0), (1, 2.0), (2, 0.0)):
        with pytest.raises(ModelLoadError):
            cache.get("broken")
        assert cache.load_attempts("broken") == expected_attempts
        now[0] += advance
    assert cache.load_count("broken") == 0


def test_warm_up_loads_what_it_can_then_raises_the_failure():
    failing = _failing("/nonexistent/sdxl-model")
    with pytest.raises(ModelLoadError, match="'broken'"):
        failing.warm_up(["tiny", "broken", "tiny_b"])
    assert failing.pipelines.resident() == ["tiny", "tiny_b"]
    assert failing.info()["resident_models"] == ["tiny", "tiny_b"]


def test_switching_scheduler_or_between_resident_models_loads_nothing_again():
    two = Engine(engine_settings(max_resident_models=2), tiny_models())
    two.warm_up(["tiny", "tiny_b"])
    assert two.pipelines.load_count() == 2
    for scheduler in ("Euler", "DPM++ 2M Karras", "Euler a"):
        for model in ("tiny", "tiny_b", "tiny"):
            generate_one(two, base_model=model, scheduler=scheduler)
    assert two.pipelines.load_count() == 2
    assert two.pipelines.load_count("tiny") == two.pipelines.load_count("tiny_b") == 1


def test_the_least_recently_used_model_leaves_when_the_cache_is_full():
    one = Engine(engine_settings(max_resident_models=1), tiny_models())
    generate_one(one, base_model="tiny")
    generate_one(one, base_model="tiny_b")
    assert one.pipelines.resident() == ["tiny_b"]
    generate_one(one, base_model="tiny")
    assert one.pipelines.resident() == ["tiny"]
    assert one.pipelines.load_count("tiny") == 2 and one.pipelines.load_count("tiny_b") == 1


def test_an_unknown_model_name_is_a_400_error(engine):
    with pytest.raises(UnknownModel, match="'nope'") as info:
        generate_one(engine, base_model="nope")
    assert isinstance(info.value, JobInputError) and info.value.status_code == 400


def test_device_and_dtype_choice():
    cpu = pick_device(engine_settings(device="cpu"))
    assert cpu.type == "cpu"
    assert pick_dtype(cpu, ModelEntry(source="x")) == torch.float32
    assert pick_dtype(torch.device("cuda"), ModelEntry(source="x")) == torch.float16
    assert pick_dtype(cpu, ModelEntry(source="x", dtype="bfloat16")) == torch.bfloat16
    if torch.cuda.is_available():
        assert pick_device(engine_settings(device="auto")).type == "cuda"
    else:
        assert pick_device(engine_settings(device="auto")).type == "cpu"
        with pytest.raises(DeviceUnavailable, match="SDXL_DEVICE=cuda"):
            pick_device(engine_settings(device="cuda"))


def test_source_kinds_of_the_shipped_models_file():
    from app.core.models_config import load_models_config
    from tests.conftest import REPO_ROOT

    models = load_models_config(REPO_ROOT / "models.yaml").models
    assert models["tiny"].source_kind == "builtin"
    for name in ("juggernaut", "realvis", "protovision", "yamers_realistic"):
        assert models[name].source_kind == "hub"
        assert models[name].vae == "madebyollin/sdxl-vae-fp16-fix"


def test_reading_the_resident_models_never_waits_for_a_load():
    # The worker's heartbeat thread reads them while a job may be loading a model for a minute.
    import threading
    import time

    from worker.loading import load_pipeline

    started, release = threading.Event(), threading.Event()

    def slow_load(*args, **kwargs):
        started.set()
        release.wait(10)
        return load_pipeline(*args, **kwargs)

    cache = PipelineCache(engine_settings(), tiny_models(), device=torch.device("cpu"), loader=slow_load)
    loading = threading.Thread(target=cache.get, args=("tiny",))
    loading.start()
    assert started.wait(10)
    before = time.monotonic()
    assert cache.resident() == []
    assert time.monotonic() - before < 0.5
    release.set()
    loading.join(10)
    assert cache.resident() == ["tiny"] and cache.load_count("tiny") == 1


def test_an_entry_dtype_reaches_every_component_and_still_generates(engine, saved_dir):
    # The plumbing the GPU's fp16 relies on, checked on the CPU with bfloat16: every weight is loaded
    # in the entry's dtype (also through the directory and vae paths), and a job still runs.
    entry = ModelEntry(source=str(saved_dir), dtype="bfloat16", vae=str(saved_dir / "vae"))
    half = Engine(engine_settings(), ModelsConfig(models={"half": entry}))
    pipe = half.pipelines.get("half")
    for component in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        assert {p.dtype for p in component.parameters()} == {torch.bfloat16}
    result = generate_one(half, base_model="half", seed=7)
    assert len(result.images) == 1 and result.images[0]
