"""The request body of CONTRACT section 2: every field, default and range, and errors that name the
field and the allowed values (`num_inference_steps must be between 20 and 100, got 19`)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import InvalidInput
from app.core.job_spec import OUTPUT_FORMATS, SEED_MODULUS, JobSpec
from app.core.scheduler_names import DEFAULT_SCHEDULER, SCHEDULER_NAMES

MAX_PROMPT_CHARS = 10_000
MAX_SEED = SEED_MODULUS - 1
RANDOM_SEED_BOUND = 2**32  # seed -1 draws uniformly in 0 to 2^32-1 (CONTRACT 3b)


class Img2ImgRequest(BaseModel):
    """The body as documented in OpenAPI. Validation itself is `validate_body`, so that every error is
    one sentence naming the field (pydantic's own error lists are not what Segmind clients expect)."""

    model_config = ConfigDict(extra="allow")

    image: str = Field(description="http(s) URL, data:image/...;base64 URL, or bare base64 of an image file")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    base_model: str | None = Field(
        None, description="a name from models.yaml (default SDXL_DEFAULT_BASE_MODEL)"
    )
    scheduler: str = Field(DEFAULT_SCHEDULER, json_schema_extra={"enum": list(SCHEDULER_NAMES)})
    num_inference_steps: int = Field(30, ge=20, le=100)
    guidance_scale: float = Field(6.5, ge=0.1, le=25)
    strength: float = Field(0.65, ge=0.1, le=1)
    samples: int = Field(1, ge=1, le=4)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 for random")
    base64: bool = False
    output_format: str = Field("jpeg", json_schema_extra={"enum": list(OUTPUT_FORMATS)})
    output_quality: int = Field(95, ge=1, le=100)
    webhook_url: str | None = None


@dataclass(frozen=True)
class GenerationParams:
    """A validated body: the image source still to be fetched/decoded, everything else final."""

    image: str | bytes  # str from JSON or a form field; bytes from a multipart upload
    prompt: str
    negative_prompt: str
    base_model: str
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    strength: float
    samples: int
    seed: int  # -1 = draw one at submission
    base64: bool
    output_format: str
    output_quality: int
    webhook_url: str | None

    def to_job_spec(
        self,
        *,
        request_id: str,
        width: int,
        height: int,
        input_key: str = "",
        key_id: str = "",
        cost: int = 0,
    ) -> JobSpec:
        """The job for the queue (or the in-process `generate`), with the seed drawn when it is -1."""
        return JobSpec(
            request_id=request_id,
            base_model=self.base_model,
            scheduler=self.scheduler,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            strength=self.strength,
            samples=self.samples,
            seed=self.seed if self.seed >= 0 else secrets.randbelow(RANDOM_SEED_BOUND),
            output_format=self.output_format,
            output_quality=self.output_quality,
            base64=self.base64,
            width=width,
            height=height,
            input_key=input_key,
            key_id=key_id,
            cost=cost,
            created_at=time.time(),
        )


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _integer(name: str, value: Any, low: int, high: int) -> int:
    allowed = f"an integer between {low} and {high}"
    if isinstance(value, bool):
        raise InvalidInput(f"{name} must be {allowed}, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InvalidInput(f"{name} must be {allowed}, got {value!r}") from None
    if not isinstance(value, int):
        raise InvalidInput(f"{name} must be {allowed}, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    allowed = f"a number between {low:g} and {high:g}"
    if isinstance(value, bool):
        raise InvalidInput(f"{name} must be {allowed}, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidInput(f"{name} must be {allowed}, got {value!r}") from None
    if not isinstance(value, int | float) or value != value:  # NaN
        raise InvalidInput(f"{name} must be {allowed}, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InvalidInput(f"{name} must be true or false, got {value!r}")


def _text(name: str, value: Any, *, min_chars: int, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string of {min_chars} to {max_chars} characters, got {value!r}")
    if not min_chars <= len(value) <= max_chars:
        raise InvalidInput(
            f"{name} must be a string of {min_chars} to {max_chars} characters, got {len(value)} characters"
        )
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")
    return value


def _choice(name: str, value: Any, allowed: list[str] | tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        shown = value if len(repr(value)) < 80 else repr(value)[:77] + "..."
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}; got {shown!r}")
    return value


def validate_body(data: Any, *, model_names: list[str], default_base_model: str) -> GenerationParams:
    """Validate a parsed body (a JSON object, or multipart form fields) into GenerationParams."""
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    if "image" not in data or data["image"] in (None, "", b""):
        raise InvalidInput("image is required: an http(s) URL, a data URL or base64 of an image file")
    image = data["image"]
    if not isinstance(image, str | bytes):
        raise InvalidInput("image must be a string: an http(s) URL, a data URL or base64 of an image file")
    if "prompt" not in data:
        raise InvalidInput("prompt is required")

    def get(name: str, default: Any) -> Any:
        value = data.get(name)
        return default if value is None else value

    webhook_url = data.get("webhook_url")
    if webhook_url is not None and (
        not isinstance(webhook_url, str) or not webhook_url.startswith(("http://", "https://"))
    ):
        raise InvalidInput(f"webhook_url must be an http(s) URL, got {webhook_url!r}")
    return GenerationParams(
        image=image,
        prompt=_text("prompt", data["prompt"], min_chars=1, max_chars=MAX_PROMPT_CHARS),
        negative_prompt=_text(
            "negative_prompt", get("negative_prompt", ""), min_chars=0, max_chars=MAX_PROMPT_CHARS
        ),
        base_model=_choice("base_model", get("base_model", default_base_model), model_names),
        scheduler=_choice("scheduler", get("scheduler", DEFAULT_SCHEDULER), SCHEDULER_NAMES),
        num_inference_steps=_integer("num_inference_steps", get("num_inference_steps", 30), 20, 100),
        guidance_scale=_number("guidance_scale", get("guidance_scale", 6.5), 0.1, 25),
        strength=_number("strength", get("strength", 0.65), 0.1, 1),
        samples=_integer("samples", get("samples", 1), 1, 4),
        seed=_integer("seed", get("seed", -1), -1, MAX_SEED),
        base64=_boolean("base64", get("base64", False)),
        output_format=_choice("output_format", get("output_format", "jpeg"), OUTPUT_FORMATS),
        output_quality=_integer("output_quality", get("output_quality", 95), 1, 100),
        webhook_url=webhook_url,
    )
