"""Typed dependencies of the routes: each piece of the runtime a route may need, the caller (counted against their
request rate), and a session the caller owns. A route names the pieces it uses, never the whole runtime.

Every dependency is `async def`, even the ones that only read an attribute: FastAPI runs a plain `def` dependency
in its thread pool, a thread hop per dependency per request."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Header
from fastapi.requests import HTTPConnection
from redis.asyncio import Redis

from backend.auth import Authenticator, Principal
from backend.chat.human_input import HumanInput
from backend.chat.langfuse_prompts import PromptSource
from backend.chat.llm import LLMClient
from backend.chat.operation_runner import OperationRunner
from backend.chat.turn_admission import TurnAdmission
from backend.chat.turn_driver import TurnDriver
from backend.config import Settings
from backend.errors import Forbidden
from backend.observability.instruments import Instruments
from backend.observability.logs import bind
from backend.runtime import Runtime
from backend.store.models import ChatSession
from backend.store.sessions import SessionStore
from backend.streams.agui_runs import AguiRuns
from backend.streams.turns import TurnRegistry
from backend.streams.user_limits import UserLimits
from backend.tools.mcp.session_servers import SessionMcpServers
from backend.tools.mcp.source import McpToolSource
from backend.tools.registry import ToolRegistry


def runtime_of(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


async def _settings(connection: HTTPConnection) -> Settings:
    return runtime_of(connection).settings


async def _sessions(connection: HTTPConnection) -> SessionStore:
    return runtime_of(connection).sessions


async def _admission(connection: HTTPConnection) -> TurnAdmission:
    return runtime_of(connection).admission


async def _driver(connection: HTTPConnection) -> TurnDriver:
    return runtime_of(connection).driver


async def _turn_registry(connection: HTTPConnection) -> TurnRegistry:
    return runtime_of(connection).turn_registry


async def _user_limits(connection: HTTPConnection) -> UserLimits:
    return runtime_of(connection).limits


async def _operations(connection: HTTPConnection) -> OperationRunner:
    return runtime_of(connection).operations


async def _redis(connection: HTTPConnection) -> Redis:
    return runtime_of(connection).redis


async def _agui_runs(connection: HTTPConnection) -> AguiRuns:
    return AguiRuns(runtime_of(connection).redis)


async def _prompts(connection: HTTPConnection) -> PromptSource:
    return runtime_of(connection).prompts


async def _model(connection: HTTPConnection) -> LLMClient:
    return runtime_of(connection).llm


async def _tools(connection: HTTPConnection) -> ToolRegistry:
    return runtime_of(connection).tools


async def _authenticator(connection: HTTPConnection) -> Authenticator:
    return runtime_of(connection).auth


async def _mcp(connection: HTTPConnection) -> McpToolSource:
    return runtime_of(connection).mcp


async def _session_mcp(connection: HTTPConnection) -> SessionMcpServers:
    return runtime_of(connection).session_mcp


async def _human_input(connection: HTTPConnection) -> HumanInput:
    return runtime_of(connection).human_input


async def _instruments(connection: HTTPConnection) -> Instruments:
    return runtime_of(connection).instruments


SettingsDep = Annotated[Settings, Depends(_settings)]
Sessions = Annotated[SessionStore, Depends(_sessions)]
"""Sessions and their messages (Postgres behind the Redis cache)."""
Admission = Annotated[TurnAdmission, Depends(_admission)]
"""Lets turns in: messages, the stop button, the session's running turn."""
Driver = Annotated[TurnDriver, Depends(_driver)]
"""Follows turns (and waits for this pod's)."""
Turns = Annotated[TurnRegistry, Depends(_turn_registry)]
"""The turns' status records and streams in Redis."""
Limits = Annotated[UserLimits, Depends(_user_limits)]
Operations = Annotated[OperationRunner, Depends(_operations)]
RedisDep = Annotated[Redis, Depends(_redis)]
AguiRunsDep = Annotated[AguiRuns, Depends(_agui_runs)]
"""Which turn each AG-UI run id is."""
Prompts = Annotated[PromptSource, Depends(_prompts)]
Model = Annotated[LLMClient, Depends(_model)]
Tools = Annotated[ToolRegistry, Depends(_tools)]
Auth = Annotated[Authenticator, Depends(_authenticator)]
Mcp = Annotated[McpToolSource, Depends(_mcp)]
SessionMcp = Annotated[SessionMcpServers, Depends(_session_mcp)]
"""The MCP servers the tools come from, and their state."""
InstrumentsDep = Annotated[Instruments, Depends(_instruments)]
HumanInputDep = Annotated[HumanInput, Depends(_human_input)]
"""Answers to the calls that wait for a person, and what a session awaits."""


async def get_current_user(
    auth: Auth, limits: Limits, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The authenticated caller. Every route that needs one counts one request against the caller's per-minute
    limit here (FastAPI resolves it once per request): 429 `rate_limited` over it."""
    user = await auth.authenticate(authorization)
    bind(user_id=user.user_id)  # on the request's log lines from here on
    await limits.check_request(user)
    return user


CurrentUser = Annotated[Principal, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> Principal:
    if not user.is_admin:
        raise Forbidden("admin only")
    return user


Admin = Annotated[Principal, Depends(get_admin)]


async def get_owned_session(session_id: UUID, user: CurrentUser, sessions: Sessions) -> ChatSession:
    """The path's session if the caller owns it; 404 for missing and foreign sessions alike."""
    bind(session_id=session_id)
    return await sessions.get(session_id, user.user_id)


OwnedSession = Annotated[ChatSession, Depends(get_owned_session)]
