"""The fast path (worker/fast_path.py, CONTRACT 11), each piece checked on the CPU where it runs there.

Real `tiny` pipelines through the real Engine: a prepared pipeline's images match the plain one's
within a tolerance (channels_last, fused QKV, torch.compile with inductor), and once compiled, jobs
of the same shape compile nothing new whatever their seed, scheduler, batch size or resident model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import engine_fixtures as fx
from tests.conftest import TEST_CACHE_DIR
from tests.engine_fixtures import (
    QUIET_NUMPY,
    engine_settings,
    generate_one,
    input_image,
    job,
    pixels,
    tiny_models,
)
from worker.fast_path import compile_count, resolve

# Session fixtures shared by the engine tests (pytest finds fixtures by name in the module).
one_thread, tiny_dir = fx.one_thread, fx.tiny_dir
pytestmark = QUIET_NUMPY
# Same weights, same seed: only the kernels differ (fused matmuls, another memory layout, inductor's
# generated code), so the images may differ by float rounding, a level or two of 255.
TOLERANCE = 3


def test_auto_turns_the_fast_path_on_for_cuda_and_off_for_the_cpu():
    settings = engine_settings()
    cpu = resolve(settings, torch.device("cpu"))
    assert (cpu.max_batch, cpu.batch_window_s, cpu.max_batch_images) == (1, 0, 8)
    assert (cpu.compile, cpu.channels_last, cpu.fuse_qkv) == ("off", False, False)
    cuda = resolve(settings, torch.device("cuda"))  # resolving never touches the device
    assert (cuda.max_batch, cuda.batch_window_s, cuda.max_batch_images) == (4, 0.025, 8)
    assert (cuda.compile, cuda.channels_last, cuda.fuse_qkv) == ("default", True, True)
    assert cuda.warmup_sizes == ((1024, 1024),)
    assert cuda.compile_cache_dir == TEST_CACHE_DIR / "compile"


def test_each_piece_is_a_setting():
    settings = engine_settings(
        max_batch=2,
        batch_window_ms=10,
        max_batch_images=6,
        compile="max-autotune",
        warmup_sizes="1024x1024, 900x1150",
        compile_cache_dir="/tmp/kernels",
        channels_last="off",
        fuse_qkv="on",
    )
    fast = resolve(settings, torch.device("cuda"))
    assert (fast.max_batch, fast.batch_window_s, fast.max_batch_images) == (2, 0.01, 6)
    assert (fast.compile, fast.channels_last, fast.fuse_qkv) == ("max-autotune", False, True)
    assert fast.warmup_sizes == ((1024, 1024), (896, 1144))  # multiples of 8, as the engine works
    assert str(fast.compile_cache_dir) == "/tmp/kernels"


def test_bad_fast_path_values_stop_the_start_with_the_variable_named():
    from app.core.settings import SettingsError, load_settings

    for name, value in (
        ("SDXL_COMPILE", "fast"),
        ("SDXL_WARMUP_SIZES", "big"),
        ("SDXL_MAX_BATCH", "0"),
        ("SDXL_CHANNELS_LAST", "maybe"),
    ):
        with pytest.raises(SettingsError, match=name):
            load_settings(**{name: value})


@pytest.fixture(scope="module")
def plain(tiny_dir, one_thread):
    from worker.engine import Engine

    return Engine(engine_settings(channels_last="off", fuse_qkv="off", compile="off"), tiny_models())


def test_channels_last_and_fused_qkv_give_the_plain_pipelines_images(plain):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from worker.engine import Engine

    fast = Engine(engine_settings(channels_last="on", fuse_qkv="on", compile="off"), tiny_models())
    pipe = fast.pipelines.get("tiny")
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {FusedAttnProcessor2_0}
    assert pipe.vae.use_slicing  # one image per decode, whatever the batch
    for fields in ({"seed": 5}, {"seed": 6, "samples": 3, "scheduler": "Euler a"}):
        ours, theirs = generate_one(fast, **fields), generate_one(plain, **fields)
        for x, y in zip(ours.images, theirs.images, strict=True):
            assert np.abs(pixels(x) - pixels(y)).max() <= TOLERANCE


def test_compiled_unet_and_decoder_match_eager_and_later_jobs_compile_nothing(plain, tmp_path):
    from worker.engine import Engine, GenerationRequest

    # The kernels persist in the test cache, as SDXL_COMPILE_CACHE_DIR keeps them for a worker:
    # the first run of this test compiles for a minute, the next ones load them in seconds.
    settings = engine_settings(
        compile="default", warmup_sizes="64x64", compile_cache_dir=str(TEST_CACHE_DIR / "compile")
    )
    compiled = Engine(settings, tiny_models())
    compiled.warm_up(["tiny", "tiny_b"])
    after_warm_up = compile_count()
    assert after_warm_up > 0, "the warm-up compiled the UNet and the decoder"
    assert any((TEST_CACHE_DIR / "compile" / "inductor").rglob("*.py")), "kernels kept on disk"

    result = generate_one(compiled, seed=11)
    assert compile_count() == after_warm_up, "a job of a warmed-up size compiles nothing"
    eager = generate_one(plain, seed=11)
    diff = np.abs(pixels(result.images[0]) - pixels(eager.images[0]))
    assert diff.max() <= TOLERANCE and diff.mean() < 0.5

    # Another seed, other schedulers (int64 or float timesteps), a batch of requests with several
    # samples, the other resident model: all run on the kernels already compiled.
    generate_one(compiled, seed=12, scheduler="UniPC")
    generate_one(compiled, seed=13, scheduler="DPM++ 2M Karras")
    compiled.generate(
        [
            GenerationRequest(job(seed=20, samples=2, request_id="a"), input_image()),
            GenerationRequest(job(seed=30, samples=1, request_id="b", prompt="another"), input_image()),
        ]
    )
    generate_one(compiled, seed=14, base_model="tiny_b", scheduler="Euler a")
    assert compile_count() == after_warm_up
