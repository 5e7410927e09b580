"""`McpTool`: one tool of an MCP server as a registry `Tool`, so the turn engine runs it like any other.

Its parameters are the server's JSON Schema, passed through; `run_tool` gives it its timeout, output cap and error
handling. What the server answers becomes the tool's output: the structured result when the server sends one,
else its text (content that is not text is described, not inlined: the model reads text only).
"""

from __future__ import annotations

import copy
from typing import Any

from mcp import types as mcp_types
from pydantic import RootModel

from backend.tools.base import Tool, ToolContext
from backend.tools.mcp.connection import McpConnection


class McpArguments(RootModel[dict[str, Any]]):
    """Any JSON object: the server checks the arguments against its own schema."""


class McpToolError(Exception):
    """The server ran the tool and reported a failure (`isError`)."""


class McpTool(Tool[McpArguments]):
    args_model = McpArguments

    def __init__(
        self,
        name: str,
        remote: mcp_types.Tool,
        server: McpConnection,
        *,
        timeout_seconds: float,
        requires_approval: bool = False,
    ) -> None:
        self.name = name
        self.remote_name = remote.name
        self.requires_approval = requires_approval
        self.description = remote.description or remote.title or f"The {remote.name!r} tool of {server.name!r}."
        self.timeout_seconds = timeout_seconds
        self._server = server
        parameters = copy.deepcopy(remote.input_schema)
        parameters.setdefault("type", "object")
        parameters.setdefault("properties", {})
        self._schema = {
            "type": "function",
            "function": {"name": name, "description": self.description, "parameters": parameters},
        }

    def schema(self) -> dict[str, Any]:
        return copy.deepcopy(self._schema)

    async def execute(self, args: McpArguments, ctx: ToolContext) -> Any:
        return output_of(await self._server.call(self.remote_name, args.root))


def output_of(result: mcp_types.CallToolResult) -> Any:
    """The model's view of a tool result. Raises `McpToolError` with the server's text when it reports an error."""
    parts = [_part(block) for block in result.content]
    if result.is_error:
        text = "\n".join(p for p in parts if isinstance(p, str)) or "the tool reported an error without a message"
        raise McpToolError(text)
    if result.structured_content is not None:
        return result.structured_content
    if all(isinstance(p, str) for p in parts):
        return "\n".join(parts)  # type: ignore[arg-type]
    return parts


def _part(block: Any) -> str | dict[str, Any]:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return {"type": block.type, "mimeType": block.mime_type, "omitted": f"{len(block.data)} base64 characters"}
    if isinstance(block, mcp_types.ResourceLink):
        return {"type": "resource_link", "uri": str(block.uri), "name": block.name}
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return {"type": "resource", "uri": str(resource.uri), "text": resource.text}
        return {"type": "resource", "uri": str(resource.uri), "omitted": "binary content"}
    return {"type": getattr(block, "type", type(block).__name__)}
