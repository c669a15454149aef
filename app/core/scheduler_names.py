"""The 30 scheduler names (CONTRACT section 8) as data: name -> (diffusers class name, overrides).

Torch-free, so the API validates names without importing diffusers; the worker resolves the class
by name and builds a fresh instance per job with `Class.from_config(model_config, **overrides)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str
    overrides: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


def _spec(class_name: str, **overrides: Any) -> SchedulerSpec:
    return SchedulerSpec(class_name, MappingProxyType(overrides))


KARRAS: dict[str, Any] = {"use_karras_sigmas": True}
EXPONENTIAL: dict[str, Any] = {"use_exponential_sigmas": True, "timestep_spacing": "linspace"}
SDE: dict[str, Any] = {"algorithm_type": "sde-dpmsolver++"}
SDE_HEUN: dict[str, Any] = {**SDE, "solver_type": "heun"}
SDE_3M: dict[str, Any] = {**SDE, "solver_order": 3}
SINGLESTEP_2S_A: dict[str, Any] = {**SDE, "solver_order": 2}

MULTISTEP = "DPMSolverMultistepScheduler"

SCHEDULERS: MappingProxyType[str, SchedulerSpec] = MappingProxyType(
    {
        "Euler": _spec("EulerDiscreteScheduler"),
        "Euler a": _spec("EulerAncestralDiscreteScheduler"),
        "LMS": _spec("LMSDiscreteScheduler"),
        "LMS Karras": _spec("LMSDiscreteScheduler", **KARRAS),
        "Heun": _spec("HeunDiscreteScheduler"),
        "DPM2": _spec("KDPM2DiscreteScheduler"),
        "DPM2 Karras": _spec("KDPM2DiscreteScheduler", **KARRAS),
        "DPM2 a": _spec("KDPM2AncestralDiscreteScheduler"),
        "DPM2 a Karras": _spec("KDPM2AncestralDiscreteScheduler", **KARRAS),
        "DPM++ 2S a": _spec("DPMSolverSinglestepScheduler", **SINGLESTEP_2S_A),
        "DPM++ 2S a Karras": _spec("DPMSolverSinglestepScheduler", **SINGLESTEP_2S_A, **KARRAS),
        "DPM++ 2M": _spec(MULTISTEP),
        "DPM++ 2M Karras": _spec(MULTISTEP, **KARRAS),
        "DPM++ SDE": _spec("DPMSolverSDEScheduler"),
        "DPM++ SDE Karras": _spec("DPMSolverSDEScheduler", **KARRAS),
        "DPM++ 2M SDE": _spec(MULTISTEP, **SDE),
        "DPM++ 2M SDE Karras": _spec(MULTISTEP, **SDE, **KARRAS),
        "DPM++ 2M SDE Exponential": _spec(MULTISTEP, **SDE, **EXPONENTIAL),
        "DPM++ 2M SDE Heun": _spec(MULTISTEP, **SDE_HEUN),
        "DPM++ 2M SDE Heun Karras": _spec(MULTISTEP, **SDE_HEUN, **KARRAS),
        "DPM++ 2M SDE Heun Exponential": _spec(MULTISTEP, **SDE_HEUN, **EXPONENTIAL),
        "DPM++ 3M SDE": _spec(MULTISTEP, **SDE_3M),
        "DPM++ 3M SDE Karras": _spec(MULTISTEP, **SDE_3M, **KARRAS),
        "DPM++ 3M SDE Exponential": _spec(MULTISTEP, **SDE_3M, **EXPONENTIAL),
        "DPM fast": _spec("DPMSolverSinglestepScheduler", solver_order=3),
        # No diffusers equivalent: the closest sampler (CONTRACT 8).
        "DPM adaptive": _spec(MULTISTEP),
        "Restart": _spec("HeunDiscreteScheduler", **KARRAS),
        "DDIM": _spec("DDIMScheduler"),
        "PLMS": _spec("PNDMScheduler", skip_prk_steps=True),
        "UniPC": _spec("UniPCMultistepScheduler"),
    }
)

DEFAULT_SCHEDULER = "UniPC"
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)
