"""The body of `GET /api/info`: what this deployment is and allows, without any secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class Limits(BaseModel):
    max_body_bytes: int
    """Largest request body (and WebSocket frame) accepted; larger ones get 413."""
    max_header_bytes: int
    max_message_chars: int
    """Longest user message, in characters."""
    requests_per_minute: int
    """Per-user limits (0: off)."""
    concurrent_turns: int
    tokens_per_day: int
    context_window_tokens: int
    """The model's context window as the service budgets it."""
    max_tool_rounds: int


class Features(BaseModel):
    langfuse: bool
    """Traces and the managed system prompt go to Langfuse."""
    posthog: bool
    """Product analytics go to PostHog."""
    webhooks: bool
    """The operation webhook has a secret, so delegated operations can be completed."""
    double_texting: Literal["reject", "interrupt", "enqueue"]
    """What a message sent while a reply is being generated does."""
    development_auth: bool
    """Every request is the development user, without a token: never in production."""


class McpServerInfo(BaseModel):
    name: str
    """The server's name in the configuration; its tools are named `<name>__<tool>`."""
    transport: Literal["stdio", "http"]
    state: Literal["connecting", "ready", "down"]
    """`down`: its tools answer an error until it is reached again (retried in the background)."""
    tools: int
    """Its tools in `tools` (while it is down, the ones it listed last)."""
    error: str | None
    """Why the last connection failed; null once connected."""
    since: datetime
    """When the server entered `state`."""


class ServiceInfo(BaseModel):
    service: str
    version: str
    model: str
    api: Literal["chat_completions"]
    """The model provider API the service calls."""
    tools: list[dict[str, Any]]
    """The tools the model may call, as the OpenAI `tools` list (names, descriptions, JSON schemas)."""
    mcp_servers: list[McpServerInfo]
    """The MCP servers the tools come from, each with its connection state (empty when none are configured)."""
    limits: Limits
    features: Features
