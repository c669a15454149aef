"""`tiny`: an SDXL-shaped img2img pipeline with small random weights, built locally on first use.

SDXL in shape (two CLIP text encoders, the second with a projection for the pooled embedding; a UNet
with `text_time` added conditioning; a VAE with scale factor 8), so every code path of the real models
runs, but small enough that a 64x64 img2img of 20 steps takes a fraction of a second on a CPU. The
weights come from a fixed seed and the tokenizer files ship in `worker/assets/tiny_tokenizer`, so the
build needs no network. Its images are noise-like: it exists to run and test the service, not to draw.

The built pipeline is saved with `save_pretrained` under `<cache_dir>/tiny/<fingerprint>`; the
fingerprint changes whenever the definition below does, so a stale cache is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"
SEED = 0
# Bump when build_tiny changes in a way the configs below do not show (it is part of the fingerprint).
REVISION = 2
CLIP_WINDOW = 77

# The text encoders: CLIP-shaped, the second one wider (as in SDXL, where they are 768 and 1280
# wide; tools that read single-file checkpoints tell the two apart by that width). SDXL concatenates
# the penultimate hidden states of both, so the UNet's cross-attention width is 32 + 48.
TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "projection_dim": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": CLIP_WINDOW,
    "layer_norm_eps": 1e-5,
}
TEXT_ENCODER_2: dict[str, Any] = {**TEXT_ENCODER, "hidden_size": 48, "intermediate_size": 53}
# After the diffusers fast tests of SDXL img2img: two levels, one cross-attention level.
# projection_class_embeddings_input_dim = 6 time ids (original size, crop, target size) x 8 + the
# 32-wide pooled text embedding of the second encoder.
UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "transformer_layers_per_block": (1, 1),
    "cross_attention_dim": 32 + 48,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "norm_num_groups": 32,
}
# Four levels, hence three down-samplings: the VAE scale factor is 8, as in SDXL.
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    # About 1 / the std of this random encoder's latents: scaled latents have unit variance, as
    # SDXL's 0.13025 gives for its trained VAE, so that the noise schedule means what it says.
    "scaling_factor": 3.0,
    "force_upcast": False,
}
# The scheduler configuration of stabilityai/stable-diffusion-xl-base-1.0, so that the 30 samplers
# are built from `tiny` exactly as they are from the real checkpoints.
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def fingerprint() -> str:
    """Changes whenever the definition of `tiny` (configs, seed or tokenizer files) changes."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [REVISION, SEED, TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE, SCHEDULER], sort_keys=True
        ).encode()
    )
    for name in ("vocab.json", "merges.txt"):
        digest.update((TOKENIZER_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def tiny_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "tiny" / fingerprint()


def ensure_tiny(cache_dir: str | Path) -> Path:
    """The directory of the built `tiny` pipeline (diffusers layout), building it if needed.

    Built in a temporary directory next to the target and renamed into place, so that a concurrent
    process sees either no model or a whole one; when two processes race, the first rename wins and
    the other one's copy is discarded (they are identical anyway).
    """
    target = tiny_path(cache_dir)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build_tiny().save_pretrained(scratch, safe_serialization=True)
        scratch.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, model_max_length=CLIP_WINDOW)


def build_tiny():
    """Build the pipeline in memory with weights drawn from SEED (the global RNG is left untouched)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = load_tokenizer()
    special = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with torch.random.fork_rng(devices=[]):
        # One seed per component, so that changing one component leaves the others' weights alone.
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(**special, **TEXT_ENCODER))
        torch.manual_seed(SEED + 1)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**special, **TEXT_ENCODER_2))
        torch.manual_seed(SEED + 2)
        unet = UNet2DConditionModel(**UNET)
        torch.manual_seed(SEED + 3)
        vae = AutoencoderKL(**VAE)
    _make_encoder_posterior_sharp(vae)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=load_tokenizer(),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _make_encoder_posterior_sharp(vae) -> None:
    """Make the random VAE's posterior (nearly) deterministic, as a trained VAE's is.

    With random weights the encoder's log-variance is about 0, so the sampled latent would be mostly
    the VAE's own noise and img2img would ignore its input: `strength` would then mean nothing. The
    log-variance half of `quant_conv` is set to a constant -20 (std e^-10); the mean half is untouched.
    """
    import torch

    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:].zero_()
        vae.quant_conv.bias[channels:].fill_(-20.0)
