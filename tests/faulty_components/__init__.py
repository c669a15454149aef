"""A UNet that fails as a GPU does, on demand, for tests/test_gpu_faults.py.

`FaultyUNet` is diffusers' `UNet2DConditionModel` with its weights and its forward pass unchanged,
except that before each forward it reads the file named by `SDXL_TEST_FAULT_FILE` and raises what it
says, with the exception classes torch raises on a CUDA device:

- `oom`: `torch.OutOfMemoryError` on every call;
- `oom-over:N`: `torch.OutOfMemoryError` when the call's batch holds more than N latents (memory
  grows with the batch, so a batch split in halves fits where the whole did not);
- `fatal`: `torch.AcceleratorError` "an illegal memory access was encountered" (a poisoned context);
- anything else, or no file: no fault.

Each fault raised is appended to `<fault file>.log` as `<mode> <latents>`, so a test can count the
engine calls that failed. A model directory uses it by naming `["tests.faulty_components",
"FaultyUNet"]` as its `unet` in `model_index.json`, which is what `save_pretrained` writes for this
class; diffusers resolves such a module only once it is imported, which `python -m
tests.faulty_components` (the real `sdxl-img2img` entry point after that import) does.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

# diffusers finds how to load a component of another library by looking up its loadable base
# classes (ModelMixin, ...) in that library's module: this module must name the one it builds on.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

FAULT_FILE_ENV = "SDXL_TEST_FAULT_FILE"

OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
    "1.02 GiB is free. (raised by tests.faulty_components)"
)
FATAL_MESSAGE = (
    "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
    "reported at some other API call, so the stacktrace below might be incorrect. (raised by "
    "tests.faulty_components)"
)


def _fault(latents: int) -> BaseException | None:
    path = os.environ.get(FAULT_FILE_ENV)
    if not path:
        return None
    try:
        mode = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    if mode == "oom" or (mode.startswith("oom-over:") and latents > int(mode.removeprefix("oom-over:"))):
        fault: BaseException = torch.OutOfMemoryError(OOM_MESSAGE)
    elif mode == "fatal":
        fault = torch.AcceleratorError(FATAL_MESSAGE)
    else:
        return None
    with open(f"{path}.log", "a") as log:
        log.write(f"{mode} {latents}\n")
    return fault


class FaultyUNet(UNet2DConditionModel):
    def forward(self, sample: torch.Tensor, *args, **kwargs):
        fault = _fault(sample.shape[0])
        if fault is not None:
            raise fault
        return super().forward(sample, *args, **kwargs)
