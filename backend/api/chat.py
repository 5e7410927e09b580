"""Turns: stream a reply (AI SDK UI message stream over SSE) or wait for it as JSON, resume, cancel, usage."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from backend.api.chat_schemas import CancelResult, SendMessage, TurnResult, Usage
from backend.api.deps import CurrentUser, OwnedSession, RuntimeDep
from backend.api.inputs import StreamCursor
from backend.api.schemas import MessagePublic
from backend.auth import Principal
from backend.chat import protocol
from backend.chat.runner import Submitted
from backend.errors import BadRequest, Gone, NotFound, ShuttingDown
from backend.runtime import Runtime
from backend.store.models import ChatSession

router = APIRouter(tags=["chat"])

_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "AI SDK UI message stream"}
}


def _stream(runtime: Runtime, turn_id: str, after: str = "0") -> StreamingResponse:
    entries = runtime.turns.follow(turn_id, after=after, heartbeat_seconds=runtime.settings.heartbeat_seconds)
    headers = {**protocol.UI_MESSAGE_STREAM_HEADERS, "x-copilot-task-id": turn_id}
    return StreamingResponse(protocol.sse_stream(entries), headers=headers, media_type="text/event-stream")


async def submit_turn(body: SendMessage, session: ChatSession, user: Principal, runtime: Runtime) -> Submitted:
    """Start a turn for `body` (also used by the WebSocket transport); `BadRequest` for an unusable message,
    `ShuttingDown` while this pod drains (the load balancer retries on another pod)."""
    if runtime.turns.draining:
        raise ShuttingDown("this server is shutting down; send the message again")
    try:
        message = body.to_user_message(runtime.settings.max_message_chars)
    except ValueError as e:
        raise BadRequest(str(e)) from e
    anonymous = runtime.settings.dev_auth and user.user_id == runtime.settings.dev_user_id
    return await runtime.turns.submit(
        session, user.user_id, message, is_authenticated=not anonymous, limited=runtime.limits.applies_to(user)
    )


@router.post("/api/chat/sessions/{session_id}/stream", response_class=StreamingResponse, responses=_SSE)
async def stream_reply(
    body: SendMessage, session: OwnedSession, user: CurrentUser, runtime: RuntimeDep
) -> StreamingResponse:
    """Send a message and stream the reply. The reply keeps going if the client disconnects."""
    submitted = await submit_turn(body, session, user, runtime)
    return _stream(runtime, submitted.turn_id)


@router.get(
    "/api/chat/sessions/{session_id}/stream",
    response_class=StreamingResponse,
    responses={**_SSE, 204: {"description": "no reply is being generated"}},
)
async def resume_session_stream(
    session: OwnedSession,
    runtime: RuntimeDep,
    after: Annotated[StreamCursor | None, Query()] = None,
    last_event_id: Annotated[StreamCursor | None, Header()] = None,
) -> Response:
    """The running reply after a cursor (`Last-Event-ID`, as an EventSource reconnects, or `?after=`), then live;
    204 when idle. Without a cursor (the AI SDK's resume, `useChat({resume: true})`) it starts at `start`; so does
    a cursor of an earlier reply of the session."""
    active = await runtime.turns.active_task(session.id)
    if active is None:
        return Response(status_code=204)
    return _stream(runtime, active[0], after=last_event_id or after or "0")


@router.get("/api/chat/tasks/{task_id}/stream", response_class=StreamingResponse, responses=_SSE)
async def task_stream(
    task_id: str,
    user: CurrentUser,
    runtime: RuntimeDep,
    after: Annotated[StreamCursor | None, Query()] = None,
    last_event_id: Annotated[StreamCursor | None, Header()] = None,
) -> StreamingResponse:
    """Replay a turn after a cursor (`Last-Event-ID` or `?after=`; from the start by default), then follow it live.

    404 for an unknown turn or another user's; 410 when its stream has expired.
    """
    if len(task_id) > 64:
        raise NotFound("task not found")
    info = await runtime.registry.info(task_id)
    if info is None:
        if await runtime.registry.owner_of_expired(task_id) == user.user_id:
            raise Gone("this task's stream has expired; load the session's messages instead")
        raise NotFound("task not found")
    if info.user_id != user.user_id:
        raise NotFound("task not found")
    return _stream(runtime, task_id, after=last_event_id or after or "0")


@router.post("/api/chat/sessions/{session_id}/cancel")
async def cancel_reply(session: OwnedSession, runtime: RuntimeDep) -> CancelResult:
    """Stop the session's running reply, whichever pod runs it. Its partial text is stored, marked interrupted."""
    turn_id = await runtime.turns.cancel(session.id)
    if turn_id is None:
        return CancelResult(task_id=None, status="idle")
    info = await runtime.registry.info(turn_id)
    return CancelResult(task_id=turn_id, status=info.status if info else "unknown")


@router.post("/api/chat/sessions/{session_id}/messages")
async def send_and_wait(body: SendMessage, session: OwnedSession, user: CurrentUser, runtime: RuntimeDep) -> TurnResult:
    """Send a message and return what the turn stored once it ends (for server-to-server callers)."""
    submitted = await submit_turn(body, session, user, runtime)
    await runtime.turns.wait(submitted.turn_id)
    info = await runtime.registry.info(submitted.turn_id)
    after = submitted.user_sequence or 0
    produced = await runtime.sessions.messages(session.id, after=after) if submitted.user_sequence else []
    return TurnResult(
        task_id=submitted.turn_id,
        status=info.status if info else "unknown",
        messages=[MessagePublic.of(m) for m in produced],
    )


@router.get("/api/chat/sessions/{session_id}/usage")
async def usage(session: OwnedSession) -> Usage:
    """Tokens the session's turns used, as reported by the model provider."""
    return Usage(
        prompt_tokens=session.prompt_tokens,
        completion_tokens=session.completion_tokens,
        total_tokens=session.prompt_tokens + session.completion_tokens,
    )
