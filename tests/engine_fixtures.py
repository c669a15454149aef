"""Session fixtures for the engine tests: `tiny` built once into TEST_CACHE_DIR, one Engine, helpers.

Kept out of conftest.py (owned by the skeleton); test modules import the fixtures they use.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.core.job_spec import JobSpec
from app.core.models_config import ModelEntry, ModelsConfig
from app.core.settings import Settings
from tests.conftest import REPO_ROOT, TEST_CACHE_DIR
from tests.specs import make_spec

SIZE = 64
# diffusers' schedulers hand torch tensors to numpy 2, which warns at every step: tens of thousands
# of lines of noise in a run of the 30 schedulers. Only that warning is silenced.
QUIET_NUMPY = pytest.mark.filterwarnings("ignore:__array_:DeprecationWarning")


def engine_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "models_file": str(REPO_ROOT / "models.yaml"),
        "default_base_model": "tiny",
        "cache_dir": str(TEST_CACHE_DIR),
        # SDXL_DEVICE=cuda runs the engine tests on a GPU (a device check); the default is the CPU.
        "device": os.environ.get("SDXL_DEVICE", "cpu"),
        "max_resident_models": 2,
    }
    values.update(overrides)
    return Settings(**values)


def tiny_models(**extra: ModelEntry) -> ModelsConfig:
    """`tiny` plus `tiny_b` (a second name for the same weights: two resident models, cheaply)."""
    return ModelsConfig(
        models={
            "tiny": ModelEntry(source="builtin:tiny"),
            "tiny_b": ModelEntry(source="builtin:tiny"),
            **extra,
        }
    )


def input_image(size: int = SIZE) -> Image.Image:
    """A structured RGB picture (gradients and a bright square): far from noise, deterministic."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), np.full_like(x, 96)], axis=-1)
    rgb[size // 4 : size // 2, size // 4 : size // 2] = 240
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def job(**fields: object) -> JobSpec:
    return make_spec(**{"width": SIZE, "height": SIZE, **fields})


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from worker.tiny import ensure_tiny

    return ensure_tiny(TEST_CACHE_DIR)


@pytest.fixture(scope="session", autouse=False)
def one_thread() -> Iterator[None]:
    """The test machine's two cores are shared with other processes: torch's OpenMP threads then
    wait on each other (spin barriers), making a 0.1 s tiny job take seconds. One thread is steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def engine(tiny_dir: Path, one_thread: None) -> Iterator[object]:
    from worker.engine import Engine

    yield Engine(engine_settings(), tiny_models())


def generate_one(engine: object, image: Image.Image | None = None, **fields: object) -> object:
    """Run one job on `engine` and return its GenerationResult."""
    from worker.engine import GenerationRequest

    [result] = engine.generate([GenerationRequest(job(**fields), image or input_image())])  # type: ignore[attr-defined]
    return result


# --- a single-file checkpoint from a diffusers pipeline --------------------------------------------
# The layout of the original SDXL checkpoints (what civitai serves and `from_single_file` reads): the
# inverse of the key mapping in diffusers.loaders.single_file_utils, for the UNet, the VAE, the
# HF-CLIP first text encoder and the OpenCLIP second one. Only what `tiny` needs (test support).

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def original_sdxl_checkpoint(pipe: object) -> dict[str, object]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    unet_fixed = {
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"],
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"],
    }
    state: dict[str, object] = {}
    per_block = pipe.unet.config.layers_per_block + 1  # type: ignore[attr-defined]
    up_has_attention = ["CrossAttn" in t for t in pipe.unet.config.up_block_types]  # type: ignore[attr-defined]
    for key, value in pipe.unet.state_dict().items():  # type: ignore[attr-defined]
        state[
            "model.diffusion_model." + (unet_fixed.get(key) or _unet_key(key, per_block, up_has_attention))
        ] = value

    vae_fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    blocks = len(pipe.vae.config.up_block_types)  # type: ignore[attr-defined]
    for key, value in pipe.vae.state_dict().items():  # type: ignore[attr-defined]
        if key in vae_fixed:
            state["first_stage_model." + vae_fixed[key]] = value
            continue
        new_key, is_attention = _vae_key(key, blocks)
        state["first_stage_model." + new_key] = (
            value[:, :, None, None] if is_attention and value.ndim == 2 else value
        )

    for key, value in pipe.text_encoder.state_dict().items():  # type: ignore[attr-defined]
        key = key if key.startswith("text_model.") else "text_model." + key
        state["conditioner.embedders.0.transformer." + key] = value
    state.update(_open_clip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))  # type: ignore[attr-defined]
    return {k: v.contiguous() for k, v in state.items()}  # type: ignore[attr-defined]


def _unet_key(key: str, per_block: int, up_has_attention: list[bool]) -> str:
    parts = key.split(".")
    rest = ".".join(parts[4:])
    if parts[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{parts[1]}.{parts[2]}"]
        suffix = ".".join(parts[3:])
        return f"middle_block.{index}." + (_resnet(suffix) if parts[1] == "resnets" else suffix)
    block, kind = int(parts[1]), parts[2]
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * per_block}.0.op.{parts[-1]}"
        index = 1 + block * per_block + int(parts[3])
        return f"input_blocks.{index}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
    if kind == "upsamplers":
        slot = 2 if up_has_attention[block] else 1
        return f"output_blocks.{block * per_block + per_block - 1}.{slot}.conv.{parts[-1]}"
    index = block * per_block + int(parts[3])
    return f"output_blocks.{index}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")


def _resnet(suffix: str) -> str:
    head, _, tail = suffix.partition(".")
    return f"{_RESNET_TO_LDM.get(head, head)}.{tail}"


def _vae_key(key: str, blocks: int) -> tuple[str, bool]:
    coder, part, *rest = key.split(".")
    if part == "mid_block":
        kind, index, *tail = rest
        if kind == "resnets":
            return f"{coder}.mid.block_{int(index) + 1}." + ".".join(tail).replace(
                "conv_shortcut", "nin_shortcut"
            ), False
        name = tail[0]
        return f"{coder}.mid.attn_1.{_VAE_ATTENTION_TO_LDM[name]}.{tail[-1]}", True
    block, kind, index, *tail = rest
    level = int(block) if coder == "encoder" else blocks - 1 - int(block)
    where = "down" if coder == "encoder" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return f"{coder}.{where}.{level}.{kind[:-2].rstrip('r')}.conv.{tail[-1]}", False
    return f"{coder}.{where}.{level}.block.{index}." + ".".join(tail).replace(
        "conv_shortcut", "nin_shortcut"
    ), False


def _open_clip(text_model_state: dict, prefix: str) -> dict[str, object]:
    import torch

    out: dict[str, object] = {}
    qkv: dict[str, dict[str, object]] = {}
    fixed = {
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    for key, value in text_model_state.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T
        elif key.startswith("text_model.encoder.layers."):
            layer, name = key.removeprefix("text_model.encoder.layers.").split(".", 1)
            base = f"{prefix}transformer.resblocks.{layer}."
            if name.startswith("self_attn.") and name.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, kind = name.split(".")
                qkv.setdefault(f"{base}attn.in_proj_{kind}", {})[proj] = value
                continue
            name = (
                name.replace("layer_norm1", "ln_1")
                .replace("layer_norm2", "ln_2")
                .replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj")
                .replace("self_attn.", "attn.")
            )
            out[base + name] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])  # type: ignore[list-item]
    return out
