"""Typed errors of the GPU side, built on `app.errors` so that the worker records a failed job with the
status it deserves (`status_code`) and a message for a person (`message`), never a traceback."""

from __future__ import annotations

from app.core.errors import InvalidInput, RequestFailed, ServiceError
from app.core.job_spec import CANCELLED
from app.core.settings import SettingsError


class JobInputError(InvalidInput):
    """The job asks for something this worker cannot do (400: the client can fix it)."""


class UnknownScheduler(JobInputError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown scheduler {name!r}")
        self.name = name


class UnknownModel(JobInputError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown base_model {name!r} (known: {', '.join(known)})")
        self.name = name


class PromptTooLong(JobInputError):
    """More CLIP tokens than SDXL_MAX_PROMPT_TOKENS (CONTRACT 3b): one credit must not buy an
    unbounded number of 77-token windows through the text encoders and the UNet's attention."""

    def __init__(self, field: str, tokens: int, limit: int) -> None:
        super().__init__(f"{field} is too long: {tokens:,} CLIP tokens, the limit is {limit:,}")
        self.field = field
        self.tokens = tokens
        self.limit = limit


class TooManyDownweightedParts(JobInputError):
    """More parts weighted under 1 than worker.prompt_limits allows: each costs one more pass of the
    text encoders over the whole prompt (compel's down-weighting), so their number bounds the cost."""

    def __init__(self, field: str, parts: int, limit: int) -> None:
        super().__init__(
            f"{field} has too many down-weighted parts ([word] or a weight under 1): {parts:,},"
            f" the limit is {limit:,}"
        )
        self.field = field
        self.parts = parts
        self.limit = limit


class UnusableOutput(RequestFailed):
    """An output of the request came out NaN (or infinite), or all black from an input that is not:
    never stored nor charged (422, as a content block: the request was valid, its result is not)."""

    default_message = "the output was not a usable image (NaN or all black) for these inputs"


class ModelLoadError(ServiceError):
    """The weights of a model could not be loaded; the message names the model and the reason."""

    status_code = 500

    def __init__(self, name: str, source: str, reason: str) -> None:
        super().__init__(f"model {name!r} could not be loaded from {source!r}: {reason}")
        self.name = name
        self.source = source
        self.reason = reason


class DeviceUnavailable(SettingsError):
    """SDXL_DEVICE asks for a device this machine does not have: like any invalid setting, it stops
    the process at start with a message naming the variable (a SystemExit, not a traceback)."""


class JobCancelled(ServiceError):
    """The job was cancelled while it ran (checked between denoising steps)."""

    # The request ends FAILED with error "cancelled" (CONTRACT 5); clients match on that string.
    default_message = CANCELLED
