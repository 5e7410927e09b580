"""Settings read from the environment: the vendors' usual variable names and empty values."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from backend.config import Settings


def settings(**kwargs: object) -> Settings:
    return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg, arg-type]


def test_vendor_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-1")
    monkeypatch.setenv("LANGFUSE_BASE_URL", "https://langfuse.example")
    monkeypatch.setenv("POSTHOG_API_KEY", "phc_1")
    monkeypatch.setenv("POSTHOG_HOST", "https://eu.i.posthog.com")
    s = settings()
    assert s.langfuse_public_key == "pk-lf-1"
    assert s.langfuse_secret_key is not None and s.langfuse_secret_key.get_secret_value() == "sk-lf-1"
    assert s.langfuse_host == "https://langfuse.example"
    assert (s.posthog_api_key, s.posthog_host) == ("phc_1", "https://eu.i.posthog.com")
    assert "sk-lf-1" not in repr(s)


def test_langfuse_host_alias_and_prefixed_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGFUSE_HOST", "https://host.example")
    assert settings().langfuse_host == "https://host.example"
    monkeypatch.setenv("COPILOT_LANGFUSE_PROMPT_NAME", "team/copilot")
    monkeypatch.setenv("COPILOT_PROMPT_CACHE_TTL_SECONDS", "15")
    s = settings()
    assert (s.langfuse_prompt_name, s.prompt_cache_ttl_seconds) == ("team/copilot", 15)


def test_empty_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST", "POSTHOG_API_KEY", "POSTHOG_HOST"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("COPILOT_LANGFUSE_PROMPT_LABEL", "")
    s = settings()
    assert (s.langfuse_public_key, s.langfuse_secret_key, s.langfuse_host) == (None, None, None)
    assert (s.posthog_api_key, s.posthog_host, s.langfuse_prompt_label) == (None, None, None)


def test_prompt_label_follows_the_environment() -> None:
    assert settings().prompt_label == "latest"
    production = settings(environment="production", jwt_secret="x" * 32, llm_api_key="sk-test")
    assert production.prompt_label == "production"
    assert settings(langfuse_prompt_label="staging").prompt_label == "staging"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", ["alice"]),
        ("alice,bob", ["alice", "bob"]),
        (" alice , bob ,", ["alice", "bob"]),
        ('["alice", "bob"]', ["alice", "bob"]),
        ("", []),
    ],
)
def test_list_settings_from_the_environment_accept_comma_separated_or_json(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("COPILOT_ADMIN_USER_IDS", raw)
    monkeypatch.setenv("COPILOT_TOOLS", raw.replace("alice", "acme.tools:registry"))
    s = settings()
    assert s.admin_user_ids == expected
    assert s.tools == [item.replace("alice", "acme.tools:registry") for item in expected]


def test_list_settings_from_an_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("COPILOT_ADMIN_USER_IDS=alice,bob\nCOPILOT_TOOLS=acme.tools:registry\n")
    s = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert (s.admin_user_ids, s.tools) == (["alice", "bob"], ["acme.tools:registry"])


def test_a_broken_json_list_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPILOT_ADMIN_USER_IDS", '["alice",')
    with pytest.raises(ValueError, match="admin_user_ids"):
        settings()


def test_list_settings_from_the_constructor_still_take_lists() -> None:
    assert settings(admin_user_ids=["alice"], tools="a.b:c,d.e:f").tools == ["a.b:c", "d.e:f"]


def test_users_mcp_servers_settings_are_checked_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("COPILOT_MCP_ALLOWED_HOSTS", "mcp.example.com,*.tools.example.com")
    monkeypatch.setenv("COPILOT_MCP_ALLOWED_NETWORKS", "10.20.0.0/16")
    with pytest.raises(ValueError, match="needs COPILOT_MCP_HEADERS_KEY"):
        settings()
    monkeypatch.setenv("COPILOT_MCP_HEADERS_KEY", "not-a-key")
    with pytest.raises(ValueError, match="COPILOT_MCP_HEADERS_KEY is not a Fernet key"):
        settings()
    monkeypatch.setenv("COPILOT_MCP_HEADERS_KEY", key)
    s = settings()
    assert s.mcp_allowed_hosts == ["mcp.example.com", "*.tools.example.com"]
    assert s.mcp_allowed_networks == ["10.20.0.0/16"]
    assert key not in repr(s)
    monkeypatch.setenv("COPILOT_MCP_ALLOWED_NETWORKS", "10.20.0.0/33")
    with pytest.raises(ValueError, match="COPILOT_MCP_ALLOWED_NETWORKS"):
        settings()
    monkeypatch.setenv("COPILOT_MCP_ALLOWED_NETWORKS", "")
    monkeypatch.setenv("COPILOT_MCP_ALLOWED_HOSTS", "https://mcp.example.com/")
    with pytest.raises(ValueError, match="COPILOT_MCP_ALLOWED_HOSTS"):
        settings()


def test_server_side_response_state_needs_the_responses_api() -> None:
    with pytest.raises(ValidationError, match="COPILOT_LLM_API=responses"):
        Settings(responses_state="server")
    assert Settings(llm_api="responses", responses_state="server").responses_state == "server"
