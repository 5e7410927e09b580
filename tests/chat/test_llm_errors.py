"""Provider errors classified as they come in, in the shapes OpenAI and gateways really send (LiteLLM proxy: the
HTTP status as a string code, the failure named in the message; in-stream error objects). The LiteLLM bodies are
recorded from its issue tracker (BerriAI/litellm#7259, BrokkAi/brokk-app#540, BerriAI/litellm#18282) and the
issue that asked for this (the stall's in-stream `408`)."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from backend.chat.error_codes import public_code
from backend.chat.llm_errors import classify, shape_of, translate

REQUEST = httpx2.Request("POST", "http://gateway.test/v1/chat/completions")


def status_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> openai.APIStatusError:
    """The exception the SDK raises for an HTTP error answer with this JSON body."""
    response = httpx2.Response(status, json=body, headers=headers, request=REQUEST)
    client = openai.AsyncOpenAI(api_key="k", base_url="http://gateway.test/v1")
    return client._make_status_error_from_response(response)


def litellm(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": None, "param": None, "code": code}}


ANTHROPIC_OVERFLOW = litellm(
    "litellm.BadRequestError: litellm.ContextWindowExceededError: AnthropicError - "
    '{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 200480 tokens > 200000 '
    'maximum"}}\nReceived Model Group=anthropic/claude-3-5-sonnet-20241022\nAvailable Model Group Fallbacks=None',
    "400",
)
ANTHROPIC_OVERFLOW_UNMAPPED = litellm(
    'litellm.BadRequestError: AnthropicException - b\'{"type":"error","error":{"type":"invalid_request_error",'
    '"message":"input length and `max_tokens` exceed context limit: 179413 + 32768 > 200000, decrease input length '
    "or `max_tokens` and try again\"}}'. Received Model Group=anthropic/claude-sonnet-4-20250514\n"
    "Available Model Group Fallbacks=None",
    "400",
)
GEMINI_OVERFLOW = litellm(
    "litellm.BadRequestError: GeminiException - The input token count exceeds the maximum number of tokens allowed "
    "(1048576).",
    "400",
)
OPENAI_OVERFLOW = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, you requested 10152 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
REGION = litellm("litellm.PermissionDeniedError: OpenAIException - Country, region, or territory not supported", "403")
RATE = litellm("litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for gpt-4o", "429")
UNAVAILABLE = litellm("litellm.ServiceUnavailableError: OpenAIException - The server is overloaded", "503")
AUTH = litellm("litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key", "401")
TIMEOUT = litellm("litellm.Timeout: Connection timed out after 600.0 seconds.", "408")


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable", "stable"),
    [
        (400, ANTHROPIC_OVERFLOW, "context_length_exceeded", False, "context_too_long"),
        (400, ANTHROPIC_OVERFLOW_UNMAPPED, "context_length_exceeded", False, "context_too_long"),
        (400, GEMINI_OVERFLOW, "context_length_exceeded", False, "context_too_long"),
        (400, OPENAI_OVERFLOW, "context_length_exceeded", False, "context_too_long"),
        (403, REGION, "unsupported_country_region_territory", False, "region_blocked"),
        (429, RATE, "rate_limit_exceeded", True, "rate_limited"),
        (503, UNAVAILABLE, "server_error", True, "provider_error"),
        (408, TIMEOUT, "request_timeout", True, "timeout"),
        (401, AUTH, None, False, "provider_refused"),
    ],
)
def test_gateway_status_errors(
    status: int, body: dict[str, Any], code: str | None, retryable: bool, stable: str
) -> None:
    error = translate(status_error(status, body))
    assert (error.provider_code, error.retryable) == (code, retryable)
    assert public_code(error.provider_code or "model_error") == stable


def test_a_status_written_as_the_code_is_not_taken_for_a_provider_code() -> None:
    shape = shape_of(litellm("litellm.BadRequestError: something else", "400"))
    assert (shape.status, shape.code) == (400, None)
    assert translate(status_error(400, litellm("litellm.BadRequestError: bad tool schema", "400"))).message == (
        "the model provider refused the request (400)"
    )


def test_retry_after_is_kept_for_a_rate_limit() -> None:
    error = translate(status_error(429, RATE, {"retry-after": "2"}))
    assert error.retry_after == 2.0


@pytest.mark.parametrize(
    ("payload", "code", "retryable"),
    [
        (
            {"error": {"message": "litellm.Timeout: Connection timed out", "type": None, "code": "408"}},
            "request_timeout",
            True,
        ),
        ({"error": {"code": "408"}}, "request_timeout", True),
        ({"error": {"message": "The server had an error", "type": "server_error", "code": None}}, "server_error", True),
        (ANTHROPIC_OVERFLOW, "context_length_exceeded", False),
        ({"error": {"message": "Invalid prompt", "code": "invalid_prompt"}}, "invalid_prompt", False),
        ({"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}, "rate_limit_exceeded", True),
        ("boom", "stream_error", False),
    ],
)
def test_in_stream_error_objects(payload: Any, code: str | None, retryable: bool) -> None:
    body = payload.get("error", payload) if isinstance(payload, dict) else payload
    error = translate(openai.APIError("in stream", REQUEST, body=body))
    assert error.retryable is retryable
    if code is not None:
        assert error.provider_code == code
    assert error.provider_code is not None


def test_the_classifier_reads_the_most_specific_failure_first() -> None:
    # A rate limit whose message mentions tokens is a rate limit, not an overflow (the status says so).
    tpm = shape_of({"message": "Request too large on tokens per min: too many tokens", "code": None}, 429)
    assert classify(tpm).provider_code == "rate_limit_exceeded"
    # A region block reported as a plain 403 message still reads as one.
    assert classify(shape_of({"message": "Country, region, or territory not supported"}, 403)).provider_code == (
        "unsupported_country_region_territory"
    )
