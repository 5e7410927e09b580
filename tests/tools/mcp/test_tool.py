from __future__ import annotations

import pytest
from mcp import types as mcp_types

from backend.tools.mcp.tool import McpToolError, output_of


def result(
    *content: mcp_types.ContentBlock, structured: dict[str, object] | None = None, error: bool = False
) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=list(content), structured_content=structured, is_error=error)


def text(value: str) -> mcp_types.TextContent:
    return mcp_types.TextContent(type="text", text=value)


def test_structured_content_is_the_output_when_the_server_sends_it() -> None:
    assert output_of(result(text('{"n": 1}'), structured={"n": 1})) == {"n": 1}


def test_text_blocks_are_joined() -> None:
    assert output_of(result(text("one"), text("two"))) == "one\ntwo"
    assert output_of(result()) == ""


def test_content_that_is_not_text_is_described_not_inlined() -> None:
    image = mcp_types.ImageContent(type="image", data="QUJD" * 1000, mime_type="image/png")
    output = output_of(result(text("a chart"), image))
    assert output == ["a chart", {"type": "image", "mimeType": "image/png", "omitted": "4000 base64 characters"}]


def test_an_error_result_raises_with_the_servers_text() -> None:
    with pytest.raises(McpToolError, match="no such ticket"):
        output_of(result(text("no such ticket"), error=True))
    with pytest.raises(McpToolError, match="without a message"):
        output_of(result(error=True))
