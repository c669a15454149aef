"""A fresh scheduler per job, from the 30-name table of `app.schedulers` and the model's own config.

Schedulers carry per-run state (step index, solver history, noise sampler), so two jobs must never
step one instance (diffusers issues #1606 and #7851). The pipeline's own scheduler is only ever read
for its config; each job gets a new instance and a shallow pipeline view that shares the weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import diffusers

from app.core.scheduler_names import SCHEDULERS
from worker.errors import UnknownScheduler

# Keys that decide *which* sampler a config describes rather than the model's noise schedule. A
# checkpoint may ship e.g. a DPMSolverMultistep config with `use_karras_sigmas: true` or an SDE
# `algorithm_type`; inherited, they would turn "Euler" into Euler Karras or "DPM++ 2M" into its SDE
# variant. They are dropped so that each name means the same sampler on every model; the table's
# overrides then set the ones that name asks for. The noise schedule (betas, prediction type,
# timestep spacing, steps offset) is kept from the model.
SAMPLER_IDENTITY_KEYS = frozenset(
    {
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "use_lu_lambdas",
        "algorithm_type",
        "solver_order",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "final_sigmas_type",
        "skip_prk_steps",
        "noise_sampler_seed",
    }
)


def scheduler_class(name: str) -> type:
    spec = SCHEDULERS.get(name)
    if spec is None:
        raise UnknownScheduler(name)
    return getattr(diffusers, spec.class_name)


def build_scheduler(name: str, model_config: Mapping[str, Any], seeds: Sequence[int] = ()) -> Any:
    """A new scheduler `name` for a model whose scheduler config is `model_config`.

    `seeds` (one per output image, in batch order) seed the Brownian-tree noise of the SDE sampler
    ("DPM++ SDE"), which would otherwise draw its entropy from torch's global RNG: the same job would
    then give other images each time, and output i would not match a one-sample run with seed + i.
    """
    spec = SCHEDULERS.get(name)
    if spec is None:
        raise UnknownScheduler(name)
    cls = getattr(diffusers, spec.class_name)
    base = {k: v for k, v in dict(model_config).items() if k not in SAMPLER_IDENTITY_KEYS}
    overrides = dict(spec.overrides)
    if seeds and "noise_sampler_seed" in inspect.signature(cls.__init__).parameters:
        # torchsde takes any non-negative integer as entropy; one tree per image keeps outputs apart.
        overrides["noise_sampler_seed"] = list(seeds) if len(seeds) > 1 else int(seeds[0])
    return cls.from_config(base, **overrides)
