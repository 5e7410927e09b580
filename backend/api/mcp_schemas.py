"""Request and response bodies of a session's MCP servers (`api/mcp_servers.py`). Headers go in, never out."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.store.mcp_servers import SessionMcpServer

ServerName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,32}$")]
"""Its tools are named `<server>__<tool>`."""

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]{0,4096}")
_RESERVED = {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "cookie"}
"""Headers the client sets itself, or that would send the request elsewhere than its URL (`Host`, through a shared
proxy) or carry a browser's session (`Cookie`); and the MCP transport's own (`mcp-*`)."""


class McpServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ServerName
    url: str = Field(min_length=1, max_length=2048)
    """A streamable HTTP endpoint on a host of `COPILOT_MCP_ALLOWED_HOSTS`."""
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)
    """Sent with every request to the server (`Authorization`, API keys); stored encrypted, never returned."""

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name[:64]!r} is not a valid HTTP header name")
            if name.lower() in _RESERVED or name.lower().startswith(("mcp-", "proxy-")):
                raise ValueError(f"header {name!r} cannot be set: the service sets it or it is not allowed")
            if not _HEADER_VALUE.fullmatch(value):
                raise ValueError(f"header {name!r}: the value has a control character or passes 4096 characters")
        return headers


class McpServerPublic(BaseModel):
    name: str
    url: str
    header_names: list[str]
    """Which headers are stored (their values are never returned)."""
    created_at: datetime

    @classmethod
    def of(cls, server: SessionMcpServer, header_names: list[str]) -> McpServerPublic:
        return cls(name=server.name, url=server.url, header_names=header_names, created_at=server.created_at)


class McpServerList(BaseModel):
    servers: list[McpServerPublic]
