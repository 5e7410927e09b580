"""The MCP servers a deployment configures: parsed and checked at startup, from JSON in the common `mcpServers` shape.

The shape is the one Claude Desktop, Cursor and VS Code use: a mapping of server names to either a stdio server
(`command`, `args`, `env`, `cwd`) or a streamable HTTP server (`url`, `headers`), optionally wrapped in
`{"mcpServers": {...}}` (or VS Code's `{"servers": {...}}`). A secret is never written in the JSON itself: an HTTP
server names the environment variable that holds its bearer token (`bearer_token_env`), which `config.py` (the
only reader of the environment) hands in. Every problem is a `ValueError` that names the server and the field.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from cryptography.fernet import Fernet
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, ValidationError

_MAX_SERVER_NAME = 32
_SERVER_NAME = re.compile(rf"[a-zA-Z0-9_-]{{1,{_MAX_SERVER_NAME}}}")
_TYPE_ALIASES = {"http": "http", "streamable-http": "http", "streamableHttp": "http", "stdio": "stdio"}


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    """Longest one tool call may take; unset: `COPILOT_MCP_TOOL_TIMEOUT_SECONDS`."""
    disabled: bool = False
    """Keep the entry but do not connect (as in Cline's and Roo's configs)."""
    requires_approval: bool | list[Annotated[str, Field(min_length=1, max_length=128)]] = False
    """Calls of this server's tools wait for the user's approval before they run: `true` for every tool, or a
    list of the server's own tool names (as the server names them)."""

    def needs_approval(self, remote_name: str) -> bool:
        """Whether a call of the server's tool `remote_name` waits for the user's approval."""
        approval = self.requires_approval
        return approval if isinstance(approval, bool) else remote_name in approval


class StdioServer(_Server):
    """A server the service starts as a child process and talks to over its stdin and stdout."""

    type: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    """Added to the small default environment the MCP SDK gives a child (`HOME`, `PATH`, ...), not to ours."""
    cwd: str | None = None


class HttpServer(_Server):
    """A server reached over the streamable HTTP transport."""

    type: Literal["http"] = "http"
    url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    bearer_token_env: str | None = Field(default=None, min_length=1)
    """The environment variable holding a token sent as `Authorization: Bearer <token>`."""
    bearer_token: SecretStr | None = Field(default=None, exclude=True)
    """Filled from `bearer_token_env` by `parse_mcp_servers`, never read from the JSON."""

    def request_headers(self) -> dict[str, str]:
        """The headers of every request to the server, the bearer token included."""
        headers = dict(self.headers)
        if self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token.get_secret_value()}"
        return headers


McpServer = StdioServer | HttpServer
"""One configured server, whichever its transport."""


def parse_mcp_servers(text: str, *, source: str, environ: Mapping[str, str]) -> dict[str, McpServer]:
    """The enabled servers of `text` (JSON) by name. `source` names where it came from in error messages;
    `environ` is where `bearer_token_env` variables are looked up."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None
    entries = _server_entries(document, source)
    servers: dict[str, McpServer] = {}
    for name, entry in entries.items():
        server = _parse_server(name, entry, source, environ)
        if not server.disabled:
            servers[name] = server
    return servers


def _server_entries(document: Any, source: str) -> dict[str, Any]:
    if isinstance(document, dict) and len(document) == 1 and next(iter(document)) in ("mcpServers", "servers"):
        document = next(iter(document.values()))
    if not isinstance(document, dict):
        raise ValueError(f'{source}: expected an object of servers by name, like {{"mcpServers": {{...}}}}')
    for name in document:
        if not _SERVER_NAME.fullmatch(name):
            raise ValueError(
                f"{source}: MCP server name {name!r}: use 1 to {_MAX_SERVER_NAME} letters, digits, '_' or '-' "
                "(its tools are named `<server>__<tool>`)"
            )
    return document


def _parse_server(name: str, entry: Any, source: str, environ: Mapping[str, str]) -> McpServer:
    where = f"{source}: MCP server {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object")
    entry = dict(entry)
    kind = entry.get("type") or ("http" if "url" in entry else "stdio")
    if kind == "sse":
        raise ValueError(f"{where}: the SSE transport is deprecated and not supported; use streamable HTTP")
    if kind not in _TYPE_ALIASES:
        raise ValueError(f"{where}: unknown type {kind!r} (use 'stdio' or 'http')")
    entry["type"] = _TYPE_ALIASES[kind]
    if "bearer_token" in entry:
        raise ValueError(f"{where}: put the token in an environment variable and name it in 'bearer_token_env'")
    try:
        server: McpServer = (StdioServer if entry["type"] == "stdio" else HttpServer).model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise ValueError(f"{where}: {problems}") from None
    if isinstance(server, HttpServer) and server.bearer_token_env is not None:
        token = environ.get(server.bearer_token_env, "")
        if not token and not server.disabled:
            raise ValueError(f"{where}: the environment variable {server.bearer_token_env} is unset or empty")
        server = server.model_copy(update={"bearer_token": SecretStr(token)})
    return server


def check_session_server_settings(hosts: list[str], networks: list[str], headers_key: SecretStr | None) -> None:
    """The settings of sessions' own MCP servers, checked at startup (`ValueError` naming the variable)."""
    for host in hosts:
        pattern = host.removeprefix("*.")
        if not pattern or "*" in pattern or "/" in pattern or ":" in pattern:
            raise ValueError(f"COPILOT_MCP_ALLOWED_HOSTS: {host!r} is not a host name or `*.domain`")
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"COPILOT_MCP_ALLOWED_NETWORKS: {network!r} is not a network like 10.0.0.0/8") from None
    if headers_key is None:
        raise ValueError("COPILOT_MCP_ALLOWED_HOSTS needs COPILOT_MCP_HEADERS_KEY (a Fernet key) to store headers")
    try:
        Fernet(headers_key.get_secret_value().encode())
    except ValueError:
        raise ValueError("COPILOT_MCP_HEADERS_KEY is not a Fernet key (32 url-safe base64-encoded bytes)") from None
