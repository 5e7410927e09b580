"""Provider errors, classified once where they come in: an SDK or transport exception, or an error object inside a
stream, becomes a `ModelError` whose `provider_code` the turn acts on (a context overflow compacts and retries) and
whose `retryable` the retry loop reads (before the first chunk only).

Gateways report the same failures in other shapes. LiteLLM proxy replaces the provider's code with the HTTP status
as a string (`"code": "400"`) and names the failure in the message (`litellm.ContextWindowExceededError: ...`);
a stalled upstream ends in an in-stream `{"error": {"code": "408"}}` or an HTTP 408. So a failure is read from its
status, its code, its type and its message, and the known ones get the codes OpenAI itself uses.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import openai

from backend.errors import ModelError

CONTEXT_TOO_LONG = "context_length_exceeded"
REGION_BLOCKED = "unsupported_country_region_territory"
RATE_LIMITED = "rate_limit_exceeded"
REQUEST_TIMEOUT = "request_timeout"
SERVER_ERROR = "server_error"

TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx2.HTTPError, ssl.SSLError, anyio.EndOfStream)
"""What reading a response can raise for a broken connection (the SDK reports these as `APIConnectionError`)."""

CLIENT_ERRORS: tuple[type[Exception], ...] = (openai.OpenAIError, *TRANSPORT_ERRORS)

# Message patterns, for gateways that keep the failure only in the message. LiteLLM prefixes its exception class
# (`litellm.ContextWindowExceededError: ...`), and passes the upstream's own message on after it.
_CONTEXT_PATTERN = re.compile(
    r"ContextWindowExceeded|context_length_exceeded|maximum context length|context window|context limit"
    r"|prompt is too long|input is too long|exceeds the maximum number of tokens|too many tokens",
    re.IGNORECASE,
)
_REGION_PATTERN = re.compile(r"unsupported_country_region_territory|country, region,? or territory", re.IGNORECASE)
_RATE_PATTERN = re.compile(r"RateLimitError|rate limit", re.IGNORECASE)
_TIMEOUT_PATTERN = re.compile(r"litellm\.Timeout|\bTimeout(Error)?\b|timed out", re.IGNORECASE)
_SERVER_PATTERN = re.compile(
    r"ServiceUnavailableError|InternalServerError|APIConnectionError|server_error|server had an error",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """A provider's failure as it was reported: any of the four may be missing."""

    status: int | None
    """The HTTP status; for an error inside a 200 stream, the status a gateway wrote as its code (`"408"`)."""
    code: str | None
    """The provider's code (`context_length_exceeded`), never a status written as a string."""
    type: str | None
    message: str


def shape_of(error: Any, status: int | None = None) -> ErrorShape:
    """An error object (`{"code", "type", "message"}`, or the `{"error": {...}}` around it) as an `ErrorShape`."""
    if isinstance(error, dict) and isinstance(error.get("error"), dict):
        error = error["error"]
    if not isinstance(error, dict):
        return ErrorShape(status, None, None, error if isinstance(error, str) else "")
    code, type_, message = error.get("code"), error.get("type"), error.get("message")
    code = str(code) if isinstance(code, (str, int)) and not isinstance(code, bool) else None
    if code is not None and code.isdigit():  # a gateway's status as a string: the status, not a code
        status = status or int(code)
        code = None
    return ErrorShape(
        status,
        code or None,
        type_ if isinstance(type_, str) else None,
        message if isinstance(message, str) else "",
    )


def classify(shape: ErrorShape, *, retry_after: float | None = None, in_stream: bool = False) -> ModelError:
    """The `ModelError` a failure of this shape is. The most specific reading wins: region, context, rate limit,
    timeout, server failure, then a plain refusal."""
    status, code = shape.status, shape.code
    text = f"{code or ''} {shape.type or ''} {shape.message}"
    if code == REGION_BLOCKED or _REGION_PATTERN.search(text):
        return ModelError(
            "The model provider is not available in your country or region.", provider_code=REGION_BLOCKED
        )
    if code == CONTEXT_TOO_LONG or (status in (None, 400, 413) and _CONTEXT_PATTERN.search(text)):
        return ModelError("the conversation is too long for the model", provider_code=CONTEXT_TOO_LONG)
    if status == 429 or code in (RATE_LIMITED, "rate_limited") or (status is None and _RATE_PATTERN.search(text)):
        return ModelError(
            "the model provider is rate limiting requests",
            retryable=True,
            provider_code=code or RATE_LIMITED,
            retry_after=retry_after,
        )
    if status == 408 or (status is None and _TIMEOUT_PATTERN.search(text)):
        return ModelError("the model provider timed out", retryable=True, provider_code=code or REQUEST_TIMEOUT)
    server = status >= 500 if status is not None else bool(_SERVER_PATTERN.search(text))
    if server or "overloaded" in text.lower():
        said = f" ({status})" if status is not None else ""
        return ModelError(
            f"the model provider failed{said}",
            retryable=True,
            provider_code=code or SERVER_ERROR,
            retry_after=retry_after,
        )
    if status is None and in_stream:
        return ModelError("the model provider reported an error", provider_code=code or "stream_error")
    return ModelError(f"the model provider refused the request ({status})", provider_code=code)


def translate(e: Exception) -> ModelError:
    """Map an SDK or transport error to a `ModelError` with a message fit for the user."""
    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError, *TRANSPORT_ERRORS)):
        return ModelError("could not reach the model provider", retryable=True, provider_code="connection_error")
    if isinstance(e, openai.APIStatusError):
        shape = shape_of(e.body, e.status_code)
        if shape.code is None and isinstance(getattr(e, "code", None), str) and not str(e.code).isdigit():
            shape = ErrorShape(shape.status, str(e.code), shape.type, shape.message)
        message = shape.message or str(e)
        return classify(
            ErrorShape(e.status_code, shape.code, shape.type, message), retry_after=_retry_after(e.response)
        )
    if isinstance(e, openai.APIError):  # an error object inside a stream (the status was 200)
        return classify(shape_of(e.body), in_stream=True)
    return ModelError(f"model call failed: {type(e).__name__}")


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
