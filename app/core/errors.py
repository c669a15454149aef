"""Typed errors raised by domain code; one exception handler turns them into `{"error": ...}`."""

from __future__ import annotations


class ServiceError(Exception):
    status_code: int = 500
    default_message = "Internal server error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


class InvalidInput(ServiceError):
    status_code = 400
    default_message = "Invalid request"


class Unauthorized(ServiceError):
    status_code = 401
    default_message = "Unauthorized. API key is invalid or may have expired"


class MissingKey(Unauthorized):
    default_message = "Missing Authorization or x-api-key in header"


class Forbidden(ServiceError):
    status_code = 403
    default_message = "This API key may not use this resource"


class NotFound(ServiceError):
    status_code = 404
    default_message = "Not found"


class InsufficientCredits(ServiceError):
    status_code = 406
    default_message = "Not enough credits for this request"


class Conflict(ServiceError):
    status_code = 409
    default_message = "Conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    default_message = "Request body too large"


class RequestFailed(ServiceError):
    status_code = 422
    default_message = "Request failed"


class RateLimited(ServiceError):
    status_code = 429
    default_message = "Rate limit exceeded"


class Unavailable(ServiceError):
    status_code = 502
    default_message = "Service temporarily unavailable"


class NotReady(ServiceError):
    status_code = 503
    default_message = "Service not ready"


class NoWorker(NotReady):
    """A v1 request for a base model that no live worker serves: it would only wait for its timeout."""

    # A worker that starts (or loads the model) takes about this long to be seen (its first beat).
    RETRY_AFTER_S = 30

    def __init__(self, base_model: str) -> None:
        super().__init__(
            f"no worker is serving base model '{base_model}'",
            headers={"Retry-After": str(self.RETRY_AFTER_S)},
        )


class Overloaded(NotReady):
    """A bounded resource of this process (the image decode budget) is full: retry shortly."""

    default_message = "Server busy, retry shortly"


class GatewayTimeout(ServiceError):
    status_code = 504
    default_message = "Request timed out"


class UnreadableRecord(ServiceError):
    """A stored request whose spec this version cannot read (corrupt, or written by another version).
    The worker ends such a request FAILED and refunded; reading it answers this, not a traceback."""

    default_message = "request record cannot be read"
