"""The job the API hands to a worker: the validated request (`JobSpec`), its statuses, and the
names clients may match on (error strings, output formats).

Free of web and GPU imports: the API and the worker both import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import StrEnum

from app.core.errors import UnreadableRecord

SLUG = "sdxl-img2img"
# The worker's entry point, enqueued by dotted path with a JSON payload (never pickled objects).
JOB_FUNCTION = "worker.tasks.run_request"
OUTPUT_FORMATS = ("jpeg", "png", "webp")
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
FILE_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
SEED_MODULUS = 2**64


class Status(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    def is_terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED)


# Error strings that clients may match on.
CANCELLED = "cancelled"
WORKER_LOST = "worker lost"
EXPIRED_IN_QUEUE = "expired in queue"
DEADLINE_EXCEEDED = "deadline exceeded"  # its Cancel-After passed (CONTRACT 10)
ENDING_ERRORS = {
    "CANCELLED": CANCELLED,
    "WORKER_LOST": WORKER_LOST,
    "EXPIRED_IN_QUEUE": EXPIRED_IN_QUEUE,
    "DEADLINE_EXCEEDED": DEADLINE_EXCEEDED,
}


@dataclass(frozen=True)
class JobSpec:
    """Every request field after validation and defaults, plus where the input image sits."""

    request_id: str
    base_model: str
    scheduler: str
    prompt: str
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    strength: float
    samples: int
    seed: int  # resolved: never -1 here; output i uses (seed + i) mod 2**64
    output_format: str
    output_quality: int
    base64: bool
    width: int  # working resolution, multiples of 8
    height: int
    input_key: str
    key_id: str = ""
    cost: int = 0
    created_at: float = 0.0
    # Content blocks apply (CONTRACT 3c); False for a key made `--unmoderated`. A spec without the
    # field (written by an older version) is moderated.
    moderated: bool = True

    def seeds(self) -> list[int]:
        return [(self.seed + i) % SEED_MODULUS for i in range(self.samples)]

    def to_json(self) -> str:
        # vars, not dataclasses.asdict: the fields are flat, and asdict's deep copy is 3x the cost
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        """Raises UnreadableRecord for a spec that is not JSON or lacks a field this version needs."""
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            # Forward compatible: a field added by a newer API version is ignored by an older worker.
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError) as exc:
            raise UnreadableRecord(f"stored spec cannot be read ({type(exc).__name__}: {exc})") from None

    def file_name(self, index: int) -> str:
        return f"{self.request_id}-{index}.{FILE_EXTENSIONS[self.output_format]}"


def base_model_of(spec_json: bytes | str | None) -> str:
    """A stored spec's base model (its queue); "" when the record has expired. Only that field is
    read, so a spec with others missing (another version's) still finds its queue."""
    if not spec_json:
        return ""
    try:
        base_model = json.loads(spec_json).get("base_model")
    except (ValueError, AttributeError, TypeError):
        base_model = None
    if not isinstance(base_model, str) or not base_model:
        raise UnreadableRecord(f"spec names no base model: {spec_json[:80]!r}")
    return base_model
