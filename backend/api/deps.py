"""Typed dependencies of the routes: the runtime, the caller (counted against their request rate), and a session
the caller owns."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Header, Request

from backend.auth import Principal
from backend.errors import Forbidden
from backend.observability.logs import bind
from backend.runtime import Runtime
from backend.store.models import ChatSession


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_current_user(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The authenticated caller. Every route that needs one counts one request against the caller's per-minute
    limit here (FastAPI resolves it once per request): 429 `rate_limited` over it."""
    user = await runtime.auth.authenticate(authorization)
    bind(user_id=user.user_id)  # on the request's log lines from here on
    await runtime.limits.check_request(user)
    return user


CurrentUser = Annotated[Principal, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> Principal:
    if not user.is_admin:
        raise Forbidden("admin only")
    return user


Admin = Annotated[Principal, Depends(get_admin)]


async def get_owned_session(session_id: UUID, user: CurrentUser, runtime: RuntimeDep) -> ChatSession:
    """The path's session if the caller owns it; 404 for missing and foreign sessions alike."""
    bind(session_id=session_id)
    return await runtime.sessions.get(session_id, user.user_id)


OwnedSession = Annotated[ChatSession, Depends(get_owned_session)]
