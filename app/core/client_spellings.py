"""What client code in the wild sends, read as the documented fields (CONTRACT 9).

Public code written for Segmind's img2img API sends `init_image` and `steps`, `"jpg"`, scheduler
names in lower case or as k-diffusion / ComfyUI sampler ids, and `img_width`/`img_height`. They are
rewritten here, before validation, so that the rest of the server only ever sees section 2's
fields; the documented field wins when both are sent. Fields nobody knows are dropped and named
back (`x-ignored-fields`) so that a typo is visible.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.core.errors import InvalidInput
from app.core.scheduler_names import SCHEDULER_NAMES

FIELD_ALIASES = {"init_image": "image", "steps": "num_inference_steps"}
OUTPUT_FORMAT_ALIASES = {"jpg": "jpeg"}
# k-diffusion / ComfyUI sampler ids -> A1111 names; `<id>_karras` -> `<name> Karras` where it exists.
SAMPLER_IDS = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpm_fast": "DPM fast",
    "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
}
_BY_LOWER_NAME = {name.lower(): name for name in SCHEDULER_NAMES}
SIZE_FIELDS = ("img_width", "img_height")
MIN_SIZE, MAX_SIZE = 64, 8192
MAX_IGNORED_NAMED = 32  # the header stays small whatever the body holds


@dataclass(frozen=True)
class Spelled:
    body: dict[str, Any]  # only documented fields
    ignored: tuple[str, ...]  # the unknown ones, in the order sent (at most MAX_IGNORED_NAMED)
    resize_to: tuple[int, int] | None  # from img_width/img_height


def normalise_spellings(data: dict[str, Any], *, known: Iterable[str]) -> Spelled:
    known = set(known)
    body = {name: value for name, value in data.items() if name in known}
    for alias, field in FIELD_ALIASES.items():
        if alias in data and body.get(field) is None:
            body[field] = data[alias]
    if isinstance(body.get("output_format"), str):
        lowered = body["output_format"].strip().lower()
        body["output_format"] = OUTPUT_FORMAT_ALIASES.get(lowered, lowered)
    if isinstance(body.get("scheduler"), str):
        body["scheduler"] = scheduler_name(body["scheduler"])
    resize_to = _resize_to(data)
    understood = known | set(FIELD_ALIASES) | (set(SIZE_FIELDS) if resize_to else set())
    ignored = tuple(name for name in data if name not in understood and _fits_a_header(name))
    return Spelled(body=body, ignored=ignored[:MAX_IGNORED_NAMED], resize_to=resize_to)


def _fits_a_header(name: Any) -> bool:
    """Only names that can be echoed in a header safely (no CR/LF, no commas, not huge)."""
    if not isinstance(name, str) or len(name) > 64:
        return False
    return name.isascii() and name.isprintable() and "," not in name


def scheduler_name(sent: str) -> str:
    """The section-8 name for an exact name, one in another case, or a sampler id; else as sent
    (validation then refuses it, listing the 30 names)."""
    if sent in SCHEDULER_NAMES:
        return sent
    lowered = sent.strip().lower()
    if lowered in _BY_LOWER_NAME:
        return _BY_LOWER_NAME[lowered]
    base, karras, after = lowered.partition("_karras")
    if base in SAMPLER_IDS and not after:
        name = SAMPLER_IDS[base] + (" Karras" if karras else "")
        if name in SCHEDULER_NAMES:
            return name
    return sent


def _resize_to(data: dict[str, Any]) -> tuple[int, int] | None:
    """Both of img_width/img_height, or neither (one alone is ignored, and named as such)."""
    if not all(data.get(name) is not None for name in SIZE_FIELDS):
        return None
    return tuple(_size(name, data[name]) for name in SIZE_FIELDS)  # type: ignore[return-value]


def _size(name: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_SIZE <= value <= MAX_SIZE:
        raise InvalidInput(f"{name} must be an integer between {MIN_SIZE} and {MAX_SIZE}, got {value!r}")
    return value
