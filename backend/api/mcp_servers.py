"""A session's own MCP servers: add, list, remove. Only the session's owner sees them (docs/mcp.md)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status

from backend.api.deps import OwnedSession, SessionMcp
from backend.api.mcp_schemas import McpServerCreate, McpServerList, McpServerPublic, ServerName
from backend.errors import BadRequest, Conflict, Forbidden, NotFound
from backend.tools.mcp.session_servers import ServerRefused
from backend.tools.mcp.url_policy import UrlRefused


async def _enabled(servers: SessionMcp) -> None:
    if not servers.enabled:
        raise Forbidden("this service does not let users add MCP servers (COPILOT_MCP_ALLOWED_HOSTS is empty)")


router = APIRouter(
    prefix="/api/chat/sessions/{session_id}/mcp-servers", tags=["mcp servers"], dependencies=[Depends(_enabled)]
)


@router.post("", status_code=status.HTTP_201_CREATED)
async def add_server(body: McpServerCreate, session: OwnedSession, servers: SessionMcp) -> McpServerPublic:
    """Give the session's turns the tools of a streamable HTTP MCP server, named `<name>__<tool>`."""
    try:
        added = await servers.add(session.id, body.name, body.url, body.headers)
    except UrlRefused as exc:
        raise BadRequest(f"MCP server URL refused: {exc}") from None
    except ServerRefused as exc:
        raise Conflict(str(exc)) from None
    return McpServerPublic.of(added, servers.header_names(added))


@router.get("")
async def list_servers(session: OwnedSession, servers: SessionMcp) -> McpServerList:
    """The session's MCP servers (header names only, never their values)."""
    found = await servers.servers(session.id)
    return McpServerList(servers=[McpServerPublic.of(s, servers.header_names(s)) for s in found])


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_server(name: ServerName, session: OwnedSession, servers: SessionMcp) -> Response:
    """Remove one of the session's MCP servers: its tools are gone from the next turn on."""
    if not await servers.remove(session.id, name):
        raise NotFound(f"this session has no MCP server named {name!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
