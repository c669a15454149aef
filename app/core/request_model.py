"""The request body of CONTRACT section 2, declared once.

`Img2ImgRequest` holds every field with its type, default, range and description. The OpenAPI
schema, the validation of a body (`validate_body`), the wording of its errors and the CLI's flags
(`sdxl-img2img generate --help`) are all read from it, so a default or a range is written in one
place. Validation is ours rather than pydantic's own because the errors must be one sentence that
names the field and the allowed values (`num_inference_steps must be between 20 and 100, got 19`),
as Segmind clients expect, and because form fields arrive as strings.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from functools import cache
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field

from app.core.client_spellings import normalise_spellings
from app.core.errors import InvalidInput
from app.core.job_spec import OUTPUT_FORMATS, SEED_MODULUS, JobSpec
from app.core.scheduler_names import DEFAULT_SCHEDULER, SCHEDULER_NAMES

MAX_PROMPT_CHARS = 10_000
MAX_SEED = SEED_MODULUS - 1
# Seed -1 draws uniformly in 0 to 2^32-1 (CONTRACT 3b). From `random`, not `secrets`: a seed is no
# secret, and `secrets` reads the OS's entropy in a system call per draw (0.7% of the API's CPU per
# submission). `random` reseeds itself in a forked child, so two API processes draw apart.
RANDOM_SEED_BITS = 32


class Img2ImgRequest(BaseModel):
    """The body as documented in OpenAPI, and the one declaration validation reads its rules from."""

    model_config = ConfigDict(extra="allow")

    image: str = Field(description="http(s) URL, data:image/...;base64 URL, or bare base64 of an image file")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what the image should show")
    negative_prompt: str = Field(
        "", max_length=MAX_PROMPT_CHARS, description="what the image should not show"
    )
    base_model: str | None = Field(
        None, description="a name from models.yaml (default: SDXL_DEFAULT_BASE_MODEL)"
    )
    scheduler: str = Field(
        DEFAULT_SCHEDULER,
        description="one of the 30 sampler names",
        json_schema_extra={"enum": list(SCHEDULER_NAMES)},
    )
    num_inference_steps: int = Field(30, ge=20, le=100, description="denoising steps")
    guidance_scale: float = Field(6.5, ge=0.1, le=25, description="how closely to follow the prompt")
    strength: float = Field(0.65, ge=0.1, le=1, description="how far from the input image")
    samples: int = Field(1, ge=1, le=4, description="images to make; output i has seed + i")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 for a random one")
    base64: bool = Field(False, description="v1: answer JSON with base64 images instead of the image")
    output_format: str = Field(
        "jpeg", description="format of the outputs", json_schema_extra={"enum": list(OUTPUT_FORMATS)}
    )
    output_quality: int = Field(95, ge=1, le=100, description="for jpeg and webp")
    webhook_url: str | None = Field(
        None, max_length=2048, description="an http(s) URL POSTed the result when the request ends"
    )


@dataclass(frozen=True)
class FieldRule:
    """What a field accepts, read from `Img2ImgRequest` (see `field_rules`)."""

    name: str
    kind: type  # str, int, float or bool
    default: Any
    required: bool
    low: float | None = None  # numbers: the range; text: the length
    high: float | None = None
    choices: tuple[str, ...] | None = None
    description: str = ""

    def allowed(self) -> str:
        """The allowed values in words, as error messages and `--help` say them."""
        if self.choices:
            return ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return f"{self.low or 0:g} to {self.high:g} characters" if self.high else "a string"
        if self.kind is int:
            return f"{int(self.low)} to {int(self.high)}"
        return f"{self.low:g} to {self.high:g}"


def _kind(annotation: Any) -> type:
    """`str | None` -> str: the type a field holds when it is sent."""
    return next((arg for arg in get_args(annotation) if arg is not type(None)), annotation)


@cache
def field_rules() -> dict[str, FieldRule]:
    """Every field's rule, in declaration order."""
    rules = {}
    for name, info in Img2ImgRequest.model_fields.items():
        kind = _kind(info.annotation)
        bounds = {type(m).__name__: m for m in info.metadata}
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        low = getattr(bounds.get("Ge"), "ge", None)
        high = getattr(bounds.get("Le"), "le", None)
        if kind is str:
            low = getattr(bounds.get("MinLen"), "min_length", 0)
            high = getattr(bounds.get("MaxLen"), "max_length", None)
        rules[name] = FieldRule(
            name=name,
            kind=kind,
            default=None if info.is_required() else info.default,
            required=info.is_required(),
            low=low,
            high=high,
            choices=tuple(extra["enum"]) if "enum" in extra else None,
            description=info.description or "",
        )
    return rules


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
    # `img_width`/`img_height` of clients in the wild (CONTRACT 9): the working size they want.
    resize_to: tuple[int, int] | None = None
    ignored_fields: tuple[str, ...] = ()  # unknown fields, named back in `x-ignored-fields`

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
            seed=self.seed if self.seed >= 0 else random.getrandbits(RANDOM_SEED_BITS),
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


def validate_body(data: Any, *, model_names: list[str], default_base_model: str) -> GenerationParams:
    """Validate a parsed body (a JSON object, or multipart form fields) into GenerationParams."""
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    rules = field_rules()
    spelled = normalise_spellings(data, known=rules.keys())
    data = spelled.body
    image = data.get("image")
    if image in (None, "", b""):
        raise InvalidInput("image is required: an http(s) URL, a data URL or base64 of an image file")
    if not isinstance(image, str | bytes):
        raise InvalidInput("image must be a string: an http(s) URL, a data URL or base64 of an image file")
    values: dict[str, Any] = {"image": image}
    for name, rule in rules.items():
        if name == "image":
            continue
        value = data.get(name)
        if name == "base_model":
            rule = FieldRule(name, str, default_base_model, False, choices=tuple(model_names))
        if value is None and rule.required:
            raise InvalidInput(f"{name} is required")
        if value is None:
            values[name] = rule.default
        else:
            values[name] = _coerce(rule, value)
    webhook_url = values["webhook_url"]
    if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
        raise InvalidInput(f"webhook_url must be an http(s) URL, got {webhook_url!r}")
    return GenerationParams(**values, resize_to=spelled.resize_to, ignored_fields=spelled.ignored)


def _coerce(rule: FieldRule, value: Any) -> Any:
    if rule.choices is not None:
        return _choice(rule, value)
    if rule.kind is bool:
        return _boolean(rule.name, value)
    if rule.kind is int:
        return _integer(rule.name, value, int(rule.low), int(rule.high))
    if rule.kind is float:
        return _number(rule.name, value, rule.low, rule.high)
    return _text(rule, value)


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


def _text(rule: FieldRule, value: Any) -> str:
    low, high = int(rule.low or 0), int(rule.high or 2**31)
    if not isinstance(value, str):
        raise InvalidInput(f"{rule.name} must be a string of {low} to {high} characters, got {value!r}")
    if not low <= len(value) <= high:
        raise InvalidInput(
            f"{rule.name} must be a string of {low} to {high} characters, got {len(value)} characters"
        )
    if "\x00" in value:
        raise InvalidInput(f"{rule.name} must not contain NUL characters")
    return value


def _choice(rule: FieldRule, value: Any) -> str:
    if not isinstance(value, str) or value not in rule.choices:
        shown = value if len(repr(value)) < 80 else repr(value)[:77] + "..."
        raise InvalidInput(f"{rule.name} must be one of {', '.join(rule.choices)}; got {shown!r}")
    return value
