"""Load one `models.yaml` entry into a `StableDiffusionXLImg2ImgPipeline`, whatever its source kind.

Hub repo ids go through `from_pretrained`, which honours HF_HOME and HF_HUB_OFFLINE by itself (they
are deliberately not overridden here); a local diffusers directory goes through the same call; a
single `.safetensors` checkpoint through `from_single_file`; `builtin:tiny` is built on first use and
then loaded from its cached directory; `builtin:sdxl-random` is built in memory, on the device
itself. Whatever goes wrong becomes a `ModelLoadError` that names the model and the reason, so a
broken entry fails its own jobs and nothing else.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline

from app.core.models_config import BUILTIN_SDXL_RANDOM, ModelEntry
from app.core.settings import Settings
from worker.errors import ModelLoadError
from worker.tiny import ensure_tiny

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 400


def load_pipeline(
    name: str, entry: ModelEntry, *, settings: Settings, device: torch.device, dtype: torch.dtype
) -> StableDiffusionXLImg2ImgPipeline:
    """Load `entry` onto `device` in `dtype`; raises ModelLoadError naming `name` on any failure."""
    try:
        if entry.source == BUILTIN_SDXL_RANDOM:
            pipe = _build_sdxl_random(entry, device=device, dtype=dtype)
        else:
            pipe = _load(entry, settings=settings, dtype=dtype)
        pipe = pipe.to(device)
    except ModelLoadError:
        raise
    except Exception as exc:  # any failure while loading weights is this model's failure, and only its
        raise ModelLoadError(name, entry.source, _reason(exc)) from exc
    if not isinstance(pipe, StableDiffusionXLImg2ImgPipeline):
        raise ModelLoadError(name, entry.source, f"not an SDXL pipeline ({type(pipe).__name__})")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load(entry: ModelEntry, *, settings: Settings, dtype: torch.dtype) -> StableDiffusionXLImg2ImgPipeline:
    kind = entry.source_kind
    # The SDXL watermark (invisible-watermark, when installed) would alter every output; never add it.
    common: dict[str, Any] = {"dtype": dtype, "add_watermarker": False}
    if entry.vae:
        common["vae"] = _load_vae(entry.vae, dtype)
    if kind == "builtin":
        return StableDiffusionXLImg2ImgPipeline.from_pretrained(ensure_tiny(settings.cache_dir), **common)
    if kind == "safetensors":
        return _load_single_file(entry, common)
    if kind == "directory":
        path = Path(entry.source).expanduser()
        if not (path / "model_index.json").is_file():
            what = "has no model_index.json" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"local diffusers directory {path} {what}")
        return StableDiffusionXLImg2ImgPipeline.from_pretrained(path, variant=entry.variant, **common)
    return StableDiffusionXLImg2ImgPipeline.from_pretrained(
        entry.source, variant=entry.variant, revision=entry.revision, **common
    )


def _build_sdxl_random(
    entry: ModelEntry, *, device: torch.device, dtype: torch.dtype
) -> StableDiffusionXLImg2ImgPipeline:
    from worker.sdxl_random import build_sdxl_random

    pipe = build_sdxl_random(device, dtype)
    if entry.vae:
        pipe = StableDiffusionXLImg2ImgPipeline(
            **{**pipe.components, "vae": _load_vae(entry.vae, dtype)},
            requires_aesthetics_score=False,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    return pipe


def _load_single_file(entry: ModelEntry, common: dict[str, Any]) -> StableDiffusionXLImg2ImgPipeline:
    source = entry.source
    if not source.startswith(("http://", "https://")):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist")
        source = str(path)
    kwargs = dict(common)
    if entry.config:
        # The diffusers layout to map the checkpoint onto (hub id or local directory); without it,
        # diffusers fetches the config of the SDXL base repository from the hub (or its HF_HOME cache).
        kwargs["config"] = (
            str(Path(entry.config).expanduser()) if entry.config.startswith(("/", "~", ".")) else entry.config
        )
    return StableDiffusionXLImg2ImgPipeline.from_single_file(source, **kwargs)


def _load_vae(source: str, dtype: torch.dtype) -> AutoencoderKL:
    if source.endswith(".safetensors"):
        return AutoencoderKL.from_single_file(str(Path(source).expanduser()), dtype=dtype)
    path = Path(source).expanduser()
    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, dtype=dtype)
    return AutoencoderKL.from_pretrained(source, dtype=dtype)


def _reason(exc: BaseException) -> str:
    """One line for a person: the exception's type and its message, whitespace folded, bounded."""
    text = re.sub(r"\s+", " ", str(exc)).strip() or "no details"
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}"
