from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from backend.config import Settings
from backend.mcp_config import HttpServer, StdioServer, parse_mcp_servers


def parse(document: Any, environ: dict[str, str] | None = None) -> dict[str, StdioServer | HttpServer]:
    return parse_mcp_servers(json.dumps(document), source="test", environ=environ or {})


def test_the_common_mcp_servers_shape() -> None:
    servers = parse(
        {
            "mcpServers": {
                "files": {"command": "npx", "args": ["-y", "server-files", "/data"], "env": {"LOG": "1"}},
                "search": {"url": "https://search.internal/mcp", "headers": {"X-Team": "copilot"}},
            }
        }
    )
    files, search = servers["files"], servers["search"]
    assert (
        isinstance(files, StdioServer) and files.args == ["-y", "server-files", "/data"] and files.env == {"LOG": "1"}
    )
    assert isinstance(search, HttpServer) and search.request_headers() == {"X-Team": "copilot"}


def test_a_bare_mapping_vs_code_servers_and_explicit_types_are_accepted() -> None:
    assert parse({"a": {"command": "x"}}).keys() == {"a"}
    assert parse({"servers": {"a": {"type": "stdio", "command": "x"}}}).keys() == {"a"}
    for kind in ("http", "streamable-http", "streamableHttp"):
        assert isinstance(parse({"a": {"type": kind, "url": "http://h/mcp"}})["a"], HttpServer)


def test_the_bearer_token_comes_from_the_named_environment_variable() -> None:
    servers = parse({"s": {"url": "https://h/mcp", "bearer_token_env": "S_TOKEN"}}, {"S_TOKEN": "abc"})
    server = servers["s"]
    assert isinstance(server, HttpServer)
    assert server.request_headers() == {"Authorization": "Bearer abc"}
    assert "abc" not in repr(server)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"s": {"url": "https://h/mcp", "bearer_token_env": "MISSING"}}, "MISSING is unset or empty"),
        ({"s": {"url": "https://h/mcp", "bearer_token": "inline"}}, "bearer_token_env"),
        ({"s": {"type": "sse", "url": "https://h/sse"}}, "SSE transport is deprecated"),
        ({"s": {"type": "websocket", "url": "wss://h"}}, "unknown type 'websocket'"),
        ({"s": {"command": "x", "argz": []}}, "argz: Extra inputs are not permitted"),
        ({"s": {"url": "not a url"}}, "MCP server 's': url"),
        ({"s": {"command": ""}}, "command"),
        ({"s": {"command": "x", "timeout_seconds": 0}}, "timeout_seconds"),
        ({"s": {"command": "x", "requires_approval": {"add": True}}}, "requires_approval"),
        ({"my.tools": {"command": "x"}}, "MCP server name 'my.tools'"),
        ({"x" * 33: {"command": "x"}}, "1 to 32 letters"),
        ({"s": "npx server"}, "expected an object"),
        (["s"], "expected an object of servers by name"),
    ],
)
def test_bad_entries_are_refused_with_the_server_and_the_field(document: Any, message: str) -> None:
    with pytest.raises(ValueError, match="test") as caught:
        parse(document)
    assert message in str(caught.value)


def test_disabled_servers_are_left_out() -> None:
    assert parse({"a": {"command": "x", "disabled": True}, "b": {"command": "y"}}).keys() == {"b"}


def test_settings_join_the_variable_and_the_file_and_refuse_a_name_in_both(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"b": {"url": "http://h/mcp"}}}))
    settings = Settings(_env_file=None, mcp_servers='{"a": {"command": "x"}}', mcp_config=config)  # type: ignore[call-arg]
    assert settings.mcp_server_specs.keys() == {"a", "b"}
    with pytest.raises(ValidationError, match="'b' is in both"):
        Settings(_env_file=None, mcp_servers='{"b": {"command": "x"}}', mcp_config=config)  # type: ignore[call-arg]


def test_settings_refuse_bad_json_and_a_missing_file_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="COPILOT_MCP_SERVERS: not valid JSON"):
        Settings(_env_file=None, mcp_servers="{nope")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="COPILOT_MCP_CONFIG: cannot read"):
        Settings(_env_file=None, mcp_config=tmp_path / "missing.json")  # type: ignore[call-arg]


def test_no_servers_by_default() -> None:
    assert Settings(_env_file=None).mcp_server_specs == {}  # type: ignore[call-arg]


def test_approval_is_for_every_tool_of_a_server_or_the_ones_named() -> None:
    servers = parse(
        {"all": {"command": "x", "requires_approval": True}, "some": {"command": "x", "requires_approval": ["rm"]}}
    )
    assert servers["all"].needs_approval("anything")
    assert servers["some"].needs_approval("rm") and not servers["some"].needs_approval("ls")
    assert not parse({"none": {"command": "x"}})["none"].needs_approval("rm")
