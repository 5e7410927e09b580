"""Stable error codes: every failure code the service produces maps to one of `CODES`, whatever the provider said."""

from __future__ import annotations

import pytest

from backend.chat import protocol as p
from backend.chat.error_codes import CODES, error_part, public_code


@pytest.mark.parametrize(
    ("failure", "code", "retryable"),
    [
        ("rate_limit_exceeded", "rate_limited", True),
        ("context_length_exceeded", "context_too_long", False),
        ("context_too_long", "context_too_long", False),
        ("unsupported_country_region_territory", "region_blocked", False),
        ("idle_timeout", "timeout", True),
        ("request_timeout", "timeout", True),
        ("timeout", "timeout", True),
        ("server_error", "provider_error", True),
        ("connection_error", "provider_error", True),
        ("truncated", "provider_error", True),
        ("content_filter", "content_filtered", False),
        ("max_output_tokens", "output_limit", False),
        ("invalid_api_key", "provider_refused", False),
        ("model_error", "provider_refused", False),
        ("invalid_tool_arguments", "invalid_tool_arguments", True),
        ("tool_round_limit", "tool_round_limit", False),
        ("storage_unavailable", "storage_unavailable", True),
        ("interrupted", "interrupted", True),
        ("internal_error", "internal_error", True),
    ],
)
def test_failure_codes_map_to_stable_codes(failure: str, code: str, retryable: bool) -> None:
    assert public_code(failure) == code
    assert error_part(failure) == p.DataPart(
        type="data-error", data={"code": code, "retryable": retryable}, transient=True
    )


def test_every_stable_code_is_its_own_code() -> None:
    assert all(public_code(code) == code for code in CODES)
