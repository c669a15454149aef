"""`models.yaml` validated into typed settings at start; an unknown key or a malformed entry stops
start-up with a message naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.core.scheduler_names import SCHEDULER_NAMES

BUILTIN_TINY = "builtin:tiny"
# The full SDXL base architecture with random weights (CONTRACT 11): for measuring speed and memory.
BUILTIN_SDXL_RANDOM = "builtin:sdxl-random"
BUILTIN_SOURCES = (BUILTIN_TINY, BUILTIN_SDXL_RANDOM)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A Hugging Face repo id, a local diffusers directory, a single .safetensors file, or a builtin
    # (builtin:tiny, builtin:sdxl-random).
    source: str = Field(min_length=1)
    variant: str | None = None  # e.g. "fp16": the half-precision files where the repo publishes them
    revision: str | None = None
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    vae: str | None = None  # repo id or local directory of a replacement VAE (the fp16-safe SDXL VAE)
    # For a single .safetensors source: the diffusers layout (hub repo id or local directory) to map
    # it onto. Without it diffusers infers the architecture and fetches the matching config from the
    # hub (or the HF_HOME cache).
    config: str | None = None
    default_scheduler: str | None = None
    description: str | None = None
    license: str | None = None

    @field_validator("source")
    @classmethod
    def _known_builtin(cls, value: str) -> str:
        if value.startswith("builtin:") and value not in BUILTIN_SOURCES:
            raise ValueError(f"unknown builtin model {value!r} (known: {', '.join(BUILTIN_SOURCES)})")
        return value

    @field_validator("default_scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is not None and value not in SCHEDULER_NAMES:
            raise ValueError(f"unknown scheduler {value!r}")
        return value

    @property
    def source_kind(self) -> Literal["builtin", "safetensors", "directory", "hub"]:
        if self.source in BUILTIN_SOURCES:
            return "builtin"
        if self.source.endswith(".safetensors"):
            return "safetensors"
        path = Path(self.source).expanduser()
        if path.is_dir() or self.source.startswith(("/", "./", "../", "~")):
            return "directory"
        return "hub"


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelEntry]

    @field_validator("models")
    @classmethod
    def _not_empty(cls, value: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        if not value:
            raise ValueError("at least one model is required")
        for name in value:
            if not name or "/" in name or ":" in name or name.strip() != name:
                raise ValueError(f"invalid model name {name!r}")
        return value

    @property
    def names(self) -> list[str]:
        return list(self.models)


class ModelsConfigError(SystemExit):
    """models.yaml is missing or malformed; the message names the file and the entry."""


# The models.yaml that ships at the project's root, read when SDXL_MODELS_FILE is left at its
# default and the current directory has none (a command run from any directory finds it).
DEFAULT_MODELS_FILE = "models.yaml"
SHIPPED_MODELS_FILE = Path(__file__).resolve().parents[2] / DEFAULT_MODELS_FILE


def load_models_config(path: str | Path) -> ModelsConfig:
    path = Path(path)
    if str(path) == DEFAULT_MODELS_FILE and not path.exists() and SHIPPED_MODELS_FILE.exists():
        path = SHIPPED_MODELS_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ModelsConfigError(f"models file not found: {path} (set SDXL_MODELS_FILE)") from None
    except yaml.YAMLError as exc:
        raise ModelsConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return ModelsConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ModelsConfigError(f"{path}: invalid models file: {problems}") from None
