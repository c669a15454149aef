"""`builtin:sdxl-random` (CONTRACT 11): SDXL base's architecture, random weights, nothing downloaded.

The full-size model is checked without memory (accelerate's `init_empty_weights`: shapes only); the
build path itself (materialising on a device, the tokenizer, the pipeline, a generation through the
engine) runs on the same code with `tiny`'s small configurations put in place of SDXL's.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.models_config import ModelEntry, ModelsConfig
from tests import engine_fixtures as fx
from tests.engine_fixtures import QUIET_NUMPY, engine_settings, input_image, job

one_thread = fx.one_thread

# stabilityai/stable-diffusion-xl-base-1.0, counted from its published weights.
SDXL_BASE_PARAMETERS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,  # the fp16-fix VAE is the same architecture
    "text_encoder": 123_060_480,  # CLIP ViT-L/14 text tower
    "text_encoder_2": 694_659_840,  # OpenCLIP ViT-bigG/14 text tower with its projection
}


def test_each_component_has_sdxl_base_parameter_count_without_allocating_it():
    from worker.sdxl_random import empty_components, parameter_counts

    components = empty_components()
    assert parameter_counts(components) == SDXL_BASE_PARAMETERS
    for module in components.values():
        assert all(p.device.type == "meta" for p in module.parameters())


def test_the_configs_are_sdxl_base_and_the_vae_is_fp16_safe():
    from worker.sdxl_random import empty_components

    components = empty_components()
    unet, vae = components["unet"].config, components["vae"].config
    assert unet.cross_attention_dim == 2048 and list(unet.transformer_layers_per_block) == [1, 2, 10]
    assert unet.addition_embed_type == "text_time" and unet.projection_class_embeddings_input_dim == 2816
    assert vae.scaling_factor == 0.13025 and vae.force_upcast is False
    assert components["text_encoder_2"].config.projection_dim == 1280


def test_builtin_sources_are_known_and_others_refused():
    assert ModelEntry(source="builtin:sdxl-random").source_kind == "builtin"
    with pytest.raises(ValueError, match="unknown builtin"):
        ModelEntry(source="builtin:sdxl-huge")


@pytest.fixture
def small_sdxl_random(monkeypatch):
    """`builtin:sdxl-random` built with tiny's shapes (same code path, a CPU-sized model)."""
    from worker import sdxl_random, tiny

    monkeypatch.setattr(sdxl_random, "UNET", tiny.UNET)
    monkeypatch.setattr(sdxl_random, "VAE", tiny.VAE)
    monkeypatch.setattr(sdxl_random, "TEXT_ENCODER", {**tiny.TEXT_ENCODER, "vocab_size": 49408})
    monkeypatch.setattr(sdxl_random, "TEXT_ENCODER_2", {**tiny.TEXT_ENCODER_2, "vocab_size": 49408})


def test_materialised_weights_come_from_the_seed_in_the_asked_dtype(small_sdxl_random):
    from worker.sdxl_random import build_sdxl_random

    first = build_sdxl_random("cpu", torch.bfloat16)
    second = build_sdxl_random("cpu", torch.bfloat16)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs between two builds"
        params = list(getattr(first, name).parameters())
        assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in params)
    # Norms at identity, biases zero, weights drawn (not left as uninitialised memory).
    unet = first.unet
    assert torch.all(unet.conv_norm_out.weight == 1) and torch.all(unet.conv_in.bias == 0)
    assert 0 < unet.conv_in.weight.float().std() < 1
    # CLIP's position ids (a buffer) survive the meta construction.
    ids = first.text_encoder.get_buffer("embeddings.position_ids")
    assert torch.equal(ids, torch.arange(77).unsqueeze(0))


@QUIET_NUMPY
def test_the_engine_serves_an_sdxl_random_entry(small_sdxl_random, one_thread):
    from worker.engine import Engine, GenerationRequest

    models = ModelsConfig(models={"rand": ModelEntry(source="builtin:sdxl-random")})
    engine = Engine(engine_settings(), models)
    spec = job(base_model="rand", num_inference_steps=20, strength=0.5, output_format="png")
    [result] = engine.generate([GenerationRequest(spec, input_image())])
    [again] = engine.generate([GenerationRequest(spec, input_image())])
    assert result.images == again.images
    pixels = np.asarray(Image.open(io.BytesIO(result.images[0])))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0
