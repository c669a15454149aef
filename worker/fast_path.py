"""The fast path (CONTRACT 11): how a resident pipeline is prepared for speed, each piece a setting.

- half precision: the entry's dtype (fp16 on CUDA by default, bf16 when the entry asks); a VAE that
  could overflow in fp16 (`force_upcast`) is decoded in fp32 by diffusers, so the models ship the
  fp16-fix VAE (see models.yaml) and `prepare` warns where one does not;
- SDPA attention (torch's fused kernels), with the QKV projections fused (`SDXL_FUSE_QKV`);
- channels_last memory format for UNet and VAE (`SDXL_CHANNELS_LAST`): what cuDNN's convolutions
  want on tensor cores;
- `torch.compile` of the UNet and the VAE decoder (`SDXL_COMPILE`), kernels cached on disk in
  `SDXL_COMPILE_CACHE_DIR` (a restart loads them instead of compiling), no recompilation when the
  scheduler, the seed or the resident model changes (see `_StableTimestep`), the batch dimension
  dynamic so that batches of any size share one graph;
- VAE decoding one image at a time (sliced): the memory of a large batch's decode stays that of one
  image, and the compiled decoder sees a single shape.

"auto" means on where it helps: on CUDA every piece is on, on the CPU they are off (inductor's CPU
code for a UNet this small is no faster than eager, and compiling it takes a minute).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.core.settings import Settings

log = logging.getLogger(__name__)

# Distinct compiled versions of one function before dynamo gives up and runs it eagerly: room for
# every warm-up size times a static and a dynamic batch, with margin.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class FastPath:
    """The resolved settings (no "auto" left) for one device."""

    max_batch: int
    batch_window_s: float
    max_batch_images: int
    compile: str  # "off", "default" or "max-autotune"
    warmup_sizes: tuple[tuple[int, int], ...]
    compile_cache_dir: Path
    channels_last: bool
    fuse_qkv: bool

    @property
    def compiled(self) -> bool:
        return self.compile != "off"


def resolve(settings: Settings, device: torch.device) -> FastPath:
    cuda = device.type == "cuda"

    def switch(value: str) -> bool:
        return cuda if value == "auto" else value == "on"

    compile_mode = settings.compile if settings.compile != "auto" else ("default" if cuda else "off")
    cache_dir = settings.compile_cache_dir or str(Path(settings.cache_dir) / "compile")
    return FastPath(
        max_batch=settings.max_batch if settings.max_batch is not None else (4 if cuda else 1),
        batch_window_s=(
            settings.batch_window_ms if settings.batch_window_ms is not None else (25 if cuda else 0)
        )
        / 1000,
        max_batch_images=settings.max_batch_images,
        compile=compile_mode,
        # The engine works in multiples of 8 (the VAE's scale factor): so do the warm-up sizes.
        warmup_sizes=tuple((w // 8 * 8, h // 8 * 8) for w, h in settings.warmup_size_list),
        compile_cache_dir=Path(cache_dir).expanduser(),
        channels_last=switch(settings.channels_last),
        fuse_qkv=switch(settings.fuse_qkv),
    )


def use_compile_cache(directory: Path) -> None:
    """Inductor's and Triton's on-disk caches in `directory`. Assigned, not defaulted: inductor writes
    its own default into TORCHINDUCTOR_CACHE_DIR the first time anything asks for its directory, and
    read then the setting would lose to it. SDXL_COMPILE_CACHE_DIR is the one knob."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(directory / "triton")
    # The FX graph cache (inductor's output per graph) and the AOT autograd cache (the traced
    # graphs) are what make a restart cheap; both default on in recent torch, said here for sure.
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autograd_cache"):  # (a newer torch names it elsewhere)
        inductor_config.autograd_cache = True


def prepare(pipe: Any, fast: FastPath) -> Any:
    """Applies the fast path to a freshly loaded pipeline, in place (before its first call)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet, vae = pipe.unet, pipe.vae
    if fast.fuse_qkv:
        # diffusers' fused projections, with its SDPA processor for them (FusedAttnProcessor2_0).
        unet.fuse_qkv_projections()
        vae.fuse_qkv_projections()
    else:
        unet.set_attn_processor(AttnProcessor2_0())
        vae.set_attn_processor(AttnProcessor2_0())
    if fast.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    vae.enable_slicing()
    if vae.dtype == torch.float16 and vae.config.force_upcast:
        log.warning(
            "this model's VAE may overflow in fp16, so diffusers decodes in fp32 (slower): give the "
            "entry the fp16-fix VAE (vae: madebyollin/sdxl-vae-fp16-fix) or dtype: bfloat16"
        )
    if fast.compiled:
        use_compile_cache(fast.compile_cache_dir)
        _raise_recompile_limit()
        unet.forward = _StableTimestep(torch.compile(unet.forward, mode=fast.compile, fullgraph=True))
        vae.decoder.forward = torch.compile(vae.decoder.forward, mode=fast.compile, fullgraph=True)
    return pipe


class _StableTimestep:
    """The compiled UNet's forward behind a wrapper that makes its inputs look the same to dynamo's
    guards whatever the job: the timestep always a float32 tensor (schedulers hand int64 or float
    ones; the UNet's time embedding casts it to float anyway, so values are unchanged) and the batch
    dimension dynamic (one graph for every batch size, not one per size)."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled

    def __call__(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        timestep = torch.as_tensor(timestep, device=sample.device).to(torch.float32)
        for value in (sample, *args, *kwargs.values(), *(kwargs.get("added_cond_kwargs") or {}).values()):
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                torch._dynamo.maybe_mark_dynamic(value, 0)
        return self._compiled(sample, timestep, *args, **kwargs)


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def compile_count() -> int:
    """Graphs dynamo has compiled in this process (a job that adds to it paid for a compilation)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


__all__ = ["FastPath", "compile_count", "prepare", "resolve", "use_compile_cache"]
