"""Session fixtures for the engine tests: `tiny` built once into TEST_CACHE_DIR, one Engine, helpers.

Kept out of conftest.py (owned by the skeleton); test modules import the fixtures they use.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.contract import JobSpec
from app.models_config import ModelEntry, ModelsConfig
from app.settings import Settings
from tests.conftest import REPO_ROOT, TEST_CACHE_DIR

SIZE = 64
# diffusers' schedulers hand torch tensors to numpy 2, which warns at every step: tens of thousands
# of lines of noise in a run of the 30 schedulers. Only that warning is silenced.
QUIET_NUMPY = pytest.mark.filterwarnings("ignore:__array_:DeprecationWarning")


def engine_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "models_file": str(REPO_ROOT / "models.yaml"),
        "default_base_model": "tiny",
        "cache_dir": str(TEST_CACHE_DIR),
        "device": "cpu",
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
    base = JobSpec(
        request_id="test",
        base_model="tiny",
        scheduler="UniPC",
        prompt="a photo of a cat sitting on a table",
        negative_prompt="blurry, low quality",
        num_inference_steps=20,
        guidance_scale=6.5,
        strength=0.5,
        samples=1,
        seed=1234,
        output_format="png",
        output_quality=95,
        base64=False,
        width=SIZE,
        height=SIZE,
        input_key="",
    )
    return replace(base, **fields)


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
