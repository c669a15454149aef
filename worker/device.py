"""Device and dtype: CUDA with fp16 when present, else CPU with fp32; settings and entries override."""

from __future__ import annotations

import torch

from app.core.models_config import ModelEntry
from app.core.settings import Settings
from worker.errors import DeviceUnavailable

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device(settings: Settings) -> torch.device:
    if settings.device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if settings.device == "cuda":
        raise DeviceUnavailable("SDXL_DEVICE=cuda but no CUDA device is available (torch sees none)")
    return torch.device("cpu")


def pick_dtype(device: torch.device, entry: ModelEntry) -> torch.dtype:
    if entry.dtype != "auto":
        return _DTYPES[entry.dtype]
    # fp16 halves memory and runs on the tensor cores; CPU kernels are fp32-only in practice.
    return torch.float16 if device.type == "cuda" else torch.float32
