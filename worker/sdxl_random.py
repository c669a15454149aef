"""`builtin:sdxl-random`: the full SDXL base architecture with random weights, built locally.

The configurations of stabilityai/stable-diffusion-xl-base-1.0 (UNet, both text encoders) and of its
fp16-safe VAE (madebyollin/sdxl-vae-fp16-fix: the same architecture, `force_upcast` off), written
here so that nothing is downloaded. Weights are drawn from a fixed seed, directly on the target
device and in the target dtype: the modules are first built without memory (accelerate's
`init_empty_weights`), then each parameter is materialised where it will live, so a 3.5-billion
parameter pipeline takes seconds on a GPU and never passes through the CPU in fp32. Its images are
noise; its cost per step and its memory are a real SDXL checkpoint's, which is what it is for:
measuring speed where the real weights cannot be fetched.

The draws depend on the device type (CUDA's generator is not the CPU's), so the weights are the same
from one build to the next on the same kind of device, not across kinds. The tokenizer is `tiny`'s
(a CLIP BPE tokenizer with a small vocabulary, shipped in the package): the text encoders keep
SDXL's 49,408-row embedding tables, of which it uses the first rows; the cost of a prompt is the
same, since CLIP always runs on whole 77-token windows.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SEED = 0
CLIP_VOCAB = 49408
CLIP_WINDOW = 77

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (the keys that differ from diffusers'
# defaults or that define the shapes).
UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
}
# madebyollin/sdxl-vae-fp16-fix, config.json: SDXL's VAE, rescaled so that fp16 cannot overflow.
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.13025,
    "force_upcast": False,
    "act_fn": "silu",
}
# text_encoder/config.json: CLIP ViT-L/14's text tower.
TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": CLIP_WINDOW,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
}
# text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower, with its projection.
TEXT_ENCODER_2: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": CLIP_WINDOW,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "layer_norm_eps": 1e-5,
}
# scheduler/scheduler_config.json of the base repository.
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

# Parameter counts of stabilityai/stable-diffusion-xl-base-1.0 (what the test holds this file to).
PARAMETERS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


def empty_components() -> dict[str, torch.nn.Module]:
    """The four modules with their parameters on the `meta` device (no memory): shapes only."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from worker.tiny import load_tokenizer

    tokenizer = load_tokenizer()
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with init_empty_weights():
        return {
            "unet": UNet2DConditionModel(**UNET),
            "vae": AutoencoderKL(**VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**special, **TEXT_ENCODER)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**special, **TEXT_ENCODER_2)),
        }


def build_sdxl_random(device: torch.device | str, dtype: torch.dtype):
    """The pipeline, its weights drawn from SEED on `device` in `dtype` (the global RNG untouched)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    from worker.tiny import _make_encoder_posterior_sharp, load_tokenizer

    device = torch.device(device)
    components = empty_components()
    for offset, name in enumerate(("text_encoder", "text_encoder_2", "unet", "vae")):
        materialise(components[name], device, dtype, seed=SEED + offset)
    # As in `tiny`: img2img must start from its input, not from the random encoder's own noise.
    _make_encoder_posterior_sharp(components["vae"])
    return StableDiffusionXLImg2ImgPipeline(
        **{name: module.eval() for name, module in components.items()},
        tokenizer=load_tokenizer(),
        tokenizer_2=load_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def materialise(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """Give every parameter of `module` (on `meta`) memory on `device`, filled from `seed`.

    Variance-preserving draws (std 1/sqrt(fan_in)), norms at identity, zero biases, CLIP's 0.02 for
    embedding tables: activations stay of order one through all 70 transformer blocks of the UNet,
    so that fp16 does not overflow and the kernels do the work a trained checkpoint makes them do.
    """
    from accelerate.utils import set_module_tensor_to_device

    generator = torch.Generator(device=device).manual_seed(seed)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    for module_name, child in module.named_modules():
        for param_name, param in list(child.named_parameters(recurse=False)):
            value = torch.empty(param.shape, device=device, dtype=torch.float32)
            if isinstance(child, norms):
                value.fill_(1.0 if param_name == "weight" else 0.0)
            elif param_name == "bias" or param.ndim < 2:
                value.zero_()
            elif isinstance(child, torch.nn.Embedding):
                value.normal_(0.0, 0.02, generator=generator)
            else:
                fan_in = math.prod(param.shape[1:])
                value.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            set_module_tensor_to_device(module, full_name, device, value=value, dtype=dtype)
    module.to(device)  # the buffers (CLIP's position ids), built on the CPU by init_empty_weights


def parameter_counts(components: dict[str, torch.nn.Module]) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}
