"""Stable error codes of failed replies, so that a client tells failures apart without reading their text.

A failed turn ends with an `error` chunk (text for people) and, just before it, a transient
`{"type": "data-error", "data": {"code", "retryable"}, "transient": true}` part. `code` is one of `CODES`, whatever
the provider or gateway said (`llm_errors` has already read their shapes); `retryable` says whether sending the
same message again later may succeed. The part comes before the `error` chunk, not after it: `useChat` (`ai` 5 to 7)
stops reading a stream at an `error` chunk (its `onError` throws), so a part after it never reaches `onData`.
"""

from __future__ import annotations

from backend.chat import protocol as p

CODES: dict[str, bool] = {
    "rate_limited": True,
    "context_too_long": False,
    "region_blocked": False,
    "timeout": True,
    "provider_error": True,
    "provider_refused": False,
    "content_filtered": False,
    "output_limit": False,
    "invalid_tool_arguments": True,
    "tool_round_limit": False,
    "storage_unavailable": True,
    "interrupted": True,
    "internal_error": True,
}
"""Each stable code and whether a later attempt may succeed."""

_BY_FAILURE: dict[str, str] = {
    "rate_limit_exceeded": "rate_limited",
    "rate_limited": "rate_limited",
    "context_length_exceeded": "context_too_long",
    "context_too_long": "context_too_long",
    "unsupported_country_region_territory": "region_blocked",
    "idle_timeout": "timeout",
    "request_timeout": "timeout",
    "timeout": "timeout",
    "connection_error": "provider_error",
    "server_error": "provider_error",
    "truncated": "provider_error",
    "malformed_stream": "provider_error",
    "malformed_response": "provider_error",
    "stream_error": "provider_error",
    "content_filter": "content_filtered",
    "max_output_tokens": "output_limit",
}
"""Failure codes (a provider's, as `ModelError.provider_code`, or the turn's own) that have a stable code of
another name; the turn's own codes in `CODES` are their own stable code."""


def public_code(failure_code: str) -> str:
    """The stable code of a failure; a code nobody here knows is the provider's refusal (its 4xx: a bad key, an
    unknown model, an invalid request)."""
    if failure_code in CODES:
        return failure_code
    return _BY_FAILURE.get(failure_code, "provider_refused")


def error_part(failure_code: str) -> p.DataPart:
    """The transient `data-error` part that goes just before a failed reply's `error` chunk."""
    code = public_code(failure_code)
    return p.DataPart(type="data-error", data={"code": code, "retryable": CODES[code]}, transient=True)
