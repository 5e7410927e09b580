"""Turns: stream a reply (AI SDK UI message stream over SSE), or wait for it as JSON; token usage."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from backend.api.chat_schemas import SendMessage, TurnResult, Usage
from backend.api.deps import CurrentUser, OwnedSession, RuntimeDep
from backend.api.schemas import MessagePublic
from backend.chat import protocol
from backend.chat.runner import Submitted
from backend.errors import BadRequest

router = APIRouter(prefix="/api/chat/sessions", tags=["chat"])


async def _submit(body: SendMessage, session: OwnedSession, user: CurrentUser, runtime: RuntimeDep) -> Submitted:
    try:
        message = body.to_user_message(runtime.settings.max_message_chars)
    except ValueError as e:
        raise BadRequest(str(e)) from e
    anonymous = runtime.settings.dev_auth and user.user_id == runtime.settings.dev_user_id
    return await runtime.turns.submit(session, user.user_id, message, is_authenticated=not anonymous)


@router.post(
    "/{session_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "AI SDK UI message stream"}},
)
async def stream_reply(
    body: SendMessage, session: OwnedSession, user: CurrentUser, runtime: RuntimeDep
) -> StreamingResponse:
    """Send a message and stream the reply. The reply keeps going if the client disconnects."""
    submitted = await _submit(body, session, user, runtime)
    frames = runtime.registry.follow(submitted.turn_id, heartbeat_seconds=runtime.settings.heartbeat_seconds)
    headers = {**protocol.UI_MESSAGE_STREAM_HEADERS, "x-copilot-task-id": submitted.turn_id}
    return StreamingResponse(frames, headers=headers, media_type="text/event-stream")


@router.post("/{session_id}/messages")
async def send_and_wait(body: SendMessage, session: OwnedSession, user: CurrentUser, runtime: RuntimeDep) -> TurnResult:
    """Send a message and return what the turn stored once it ends (for server-to-server callers)."""
    submitted = await _submit(body, session, user, runtime)
    await runtime.turns.wait(submitted.turn_id)
    info = await runtime.registry.info(submitted.turn_id)
    after = submitted.user_sequence or 0
    produced = await runtime.sessions.messages(session.id, after=after) if submitted.user_sequence else []
    return TurnResult(
        task_id=submitted.turn_id,
        status=info.status if info else "unknown",
        messages=[MessagePublic.of(m) for m in produced],
    )


@router.get("/{session_id}/usage")
async def usage(session: OwnedSession) -> Usage:
    """Tokens the session's turns used, as reported by the model provider."""
    return Usage(
        prompt_tokens=session.prompt_tokens,
        completion_tokens=session.completion_tokens,
        total_tokens=session.prompt_tokens + session.completion_tokens,
    )
