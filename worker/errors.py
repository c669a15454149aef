"""Typed errors of the GPU side, built on `app.errors` so that the worker records a failed job with the
status it deserves (`status_code`) and a message for a person (`message`), never a traceback."""

from __future__ import annotations

from app.core.errors import InvalidInput, ServiceError
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
