"""The service's error hierarchy. Each class carries its HTTP status and a stable machine-readable code.

Routes raise these; one exception handler (in `app.py`) turns them into JSON before a stream starts. Once an SSE
response has started, the turn reports errors inside the stream instead (an `error` chunk, then `finish`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class CopilotError(Exception):
    """Base of every error the service reports to a client."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the error's response."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(CopilotError):
    status_code = 400
    code = "bad_request"


class Unauthorized(CopilotError):
    status_code = 401
    code = "unauthorized"


class Forbidden(CopilotError):
    status_code = 403
    code = "forbidden"


class NotFound(CopilotError):
    status_code = 404
    code = "not_found"


class Conflict(CopilotError):
    status_code = 409
    code = "conflict"


class Gone(CopilotError):
    status_code = 410
    code = "gone"


class PayloadTooLarge(CopilotError):
    status_code = 413
    code = "payload_too_large"


class HeadersTooLarge(CopilotError):
    status_code = 431
    code = "headers_too_large"


class ServiceUnavailable(CopilotError):
    status_code = 503
    code = "service_unavailable"


class ShuttingDown(ServiceUnavailable):
    """This pod is draining (it got SIGTERM): no new turn starts here; the same request succeeds on another pod."""

    def headers(self) -> dict[str, str]:
        return {"retry-after": "1"}


class Overloaded(ServiceUnavailable):
    """This pod runs as many turns as it may (`max_concurrent_turns`): a new one is refused before anything is
    stored, so the same request succeeds on another pod, or on this one `retry_after` seconds later."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class StorageUnavailable(ServiceUnavailable):
    """Postgres did not answer (stopped, restarting, unreachable, or the connection dropped mid-query). The store
    raises this one type for every such failure; whether an interrupted write committed is unknown, so writes that
    are retried carry keys that make a second attempt write nothing twice."""


class ModelError(CopilotError):
    """The model provider failed; `retryable` says whether a later attempt may succeed."""

    status_code = 502
    code = "model_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        provider_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.provider_code = provider_code
        self.retry_after = retry_after
        """Seconds the provider asked us to wait (HTTP `retry-after`), if it said."""


class RateLimited(CopilotError):
    """A per-user limit is reached. `retry_after` (whole seconds, at least 1) becomes the `Retry-After` header;
    `limit` names which one: `requests_per_minute`, `concurrent_turns` or `tokens_per_day`."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, limit: str, retry_after: int) -> None:
        super().__init__(message, limit=limit, retry_after=retry_after)
        self.limit = limit
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class ConfigurationError(Exception):
    """The configuration cannot run (e.g. production without a model): raised at startup, never sent to a client."""
