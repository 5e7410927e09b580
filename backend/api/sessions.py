"""Sessions: create, list, read with messages, rename, delete. Only the caller's own sessions are visible."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from redis.exceptions import RedisError

from backend.api.deps import Admission, CurrentUser, HumanInputDep, OwnedSession, Sessions
from backend.api.inputs import PG_INT_MAX
from backend.api.schemas import (
    ActiveTask,
    AwaitingPublic,
    MessagePublic,
    SessionCreate,
    SessionDetail,
    SessionPage,
    SessionPublic,
    SessionUpdate,
    decode_cursor,
    encode_cursor,
)

log = logging.getLogger("copilot.api.sessions")

router = APIRouter(prefix="/api/chat/sessions", tags=["sessions"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_session(body: SessionCreate, user: CurrentUser, sessions: Sessions) -> SessionPublic:
    """Start a new chat session owned by the caller."""
    session = await sessions.create(user.user_id, title=body.title, metadata=body.metadata)
    return SessionPublic.of(session)


@router.get("")
async def list_sessions(
    user: CurrentUser,
    store: Sessions,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> SessionPage:
    """The caller's sessions, most recently active first."""
    before = decode_cursor(cursor) if cursor else None
    sessions = await store.list_for_user(user.user_id, limit=limit + 1, before=before)
    page, more = sessions[:limit], len(sessions) > limit
    return SessionPage(
        sessions=[SessionPublic.of(s) for s in page], next_cursor=encode_cursor(page[-1]) if more else None
    )


@router.get("/{session_id}")
async def get_session(
    session: OwnedSession,
    sessions: Sessions,
    admission: Admission,
    human_input: HumanInputDep,
    after: Annotated[int, Query(ge=0, le=PG_INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> SessionDetail:
    """One session with a page of its messages (sequence greater than `after`) and the tool calls that wait for
    the user (`awaiting`)."""
    messages = await sessions.messages(session.id, after=after, limit=limit + 1)
    page, more = messages[:limit], len(messages) > limit
    try:
        active, known = await admission.active_task(session.id), True
    except RedisError:
        # Running turns live in Redis only; Postgres still serves the session, so say what is not known.
        log.warning("Redis unavailable: active task of session %s unknown", session.id)
        active, known = None, False
    return SessionDetail(
        **SessionPublic.of(session).model_dump(),
        active_task=ActiveTask(task_id=active[0], status=active[1]) if active else None,
        active_task_known=known,
        awaiting=[AwaitingPublic.of(c) for c in await human_input.waiting(session.id)],
        messages=[MessagePublic.of(m) for m in page],
        next_after=page[-1].sequence if more else None,
    )


@router.patch("/{session_id}")
async def update_session(
    session: OwnedSession, body: SessionUpdate, user: CurrentUser, sessions: Sessions
) -> SessionPublic:
    """Rename a session."""
    return SessionPublic.of(await sessions.rename(session.id, user.user_id, body.title))


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_session(session: OwnedSession, user: CurrentUser, sessions: Sessions) -> Response:
    """Delete a session and its messages."""
    await sessions.delete(session.id, user.user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
