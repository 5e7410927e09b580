"""Turns: stream a reply (AI SDK UI message stream over SSE) or wait for it as JSON, resume, cancel, usage."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from backend.api.chat_schemas import CancelResult, ModelUsagePublic, SendMessage, TurnResult, Usage
from backend.api.deps import (
    Admission,
    CurrentUser,
    Driver,
    HumanInputDep,
    Limits,
    OwnedSession,
    Sessions,
    SettingsDep,
    Turns,
)
from backend.api.inputs import StreamCursor
from backend.api.schemas import MessagePublic
from backend.api.submission import submit_turn
from backend.chat import protocol
from backend.chat.turn_driver import TurnDriver
from backend.chat.usage import cost_usd
from backend.config import Settings
from backend.errors import Gone, NotFound
from backend.store.models import ModelUsage

router = APIRouter(tags=["chat"])

_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "AI SDK UI message stream"}
}


def _stream(driver: TurnDriver, settings: Settings, turn_id: str, after: str = "0") -> StreamingResponse:
    entries = driver.follow(turn_id, after=after, heartbeat_seconds=settings.heartbeat_seconds)
    headers = {**protocol.UI_MESSAGE_STREAM_HEADERS, "x-copilot-task-id": turn_id}
    return StreamingResponse(protocol.sse_stream(entries), headers=headers, media_type="text/event-stream")


@router.post("/api/chat/sessions/{session_id}/stream", response_class=StreamingResponse, responses=_SSE)
async def stream_reply(
    body: SendMessage,
    session: OwnedSession,
    user: CurrentUser,
    admission: Admission,
    human_input: HumanInputDep,
    driver: Driver,
    limits: Limits,
    settings: SettingsDep,
) -> StreamingResponse:
    """Send a message and stream the reply. The reply keeps going if the client disconnects. useChat's assistant
    message sent back with tool outputs or approvals answers the calls that wait; the stream is the message's
    continuation."""
    submitted = await submit_turn(
        body, session, user, admission=admission, human_input=human_input, settings=settings, limits=limits
    )
    return _stream(driver, settings, submitted.turn_id)


@router.get(
    "/api/chat/sessions/{session_id}/stream",
    response_class=StreamingResponse,
    responses={**_SSE, 204: {"description": "no reply is being generated"}},
)
async def resume_session_stream(
    session: OwnedSession,
    admission: Admission,
    driver: Driver,
    settings: SettingsDep,
    after: Annotated[StreamCursor | None, Query()] = None,
    last_event_id: Annotated[StreamCursor | None, Header()] = None,
) -> Response:
    """The running reply after a cursor (`Last-Event-ID`, as an EventSource reconnects, or `?after=`), then live;
    204 when idle. Without a cursor (the AI SDK's resume, `useChat({resume: true})`) it starts at `start`; so does
    a cursor of an earlier reply of the session."""
    active = await admission.active_task(session.id)
    if active is None:
        return Response(status_code=204)
    return _stream(driver, settings, active[0], after=last_event_id or after or "0")


@router.get("/api/chat/tasks/{task_id}/stream", response_class=StreamingResponse, responses=_SSE)
async def task_stream(
    task_id: str,
    user: CurrentUser,
    turns: Turns,
    driver: Driver,
    settings: SettingsDep,
    after: Annotated[StreamCursor | None, Query()] = None,
    last_event_id: Annotated[StreamCursor | None, Header()] = None,
) -> StreamingResponse:
    """Replay a turn after a cursor (`Last-Event-ID` or `?after=`; from the start by default), then follow it live.

    404 for an unknown turn or another user's; 410 when its stream has expired.
    """
    if len(task_id) > 64:
        raise NotFound("task not found")
    info = await turns.info(task_id)
    if info is None:
        if await turns.owner_of_expired(task_id) == user.user_id:
            raise Gone("this task's stream has expired; load the session's messages instead")
        raise NotFound("task not found")
    if info.user_id != user.user_id:
        raise NotFound("task not found")
    return _stream(driver, settings, task_id, after=last_event_id or after or "0")


@router.post("/api/chat/sessions/{session_id}/cancel")
async def cancel_reply(session: OwnedSession, admission: Admission, turns: Turns) -> CancelResult:
    """Stop the session's running reply, whichever pod runs it. Its partial text is stored, marked interrupted."""
    turn_id = await admission.cancel(session.id)
    if turn_id is None:
        return CancelResult(task_id=None, status="idle")
    info = await turns.info(turn_id)
    return CancelResult(task_id=turn_id, status=info.status if info else "unknown")


@router.post("/api/chat/sessions/{session_id}/messages")
async def send_and_wait(
    body: SendMessage,
    session: OwnedSession,
    user: CurrentUser,
    admission: Admission,
    human_input: HumanInputDep,
    driver: Driver,
    turns: Turns,
    sessions: Sessions,
    limits: Limits,
    settings: SettingsDep,
) -> TurnResult:
    """Send a message and return what the turn stored once it ends (for server-to-server callers)."""
    submitted = await submit_turn(
        body, session, user, admission=admission, human_input=human_input, settings=settings, limits=limits
    )
    await driver.wait(submitted.turn_id)
    info = await turns.info(submitted.turn_id)
    after = submitted.user_sequence or 0
    produced = await sessions.messages(session.id, after=after) if submitted.user_sequence else []
    return TurnResult(
        task_id=submitted.turn_id,
        status=info.status if info else "unknown",
        messages=[MessagePublic.of(m) for m in produced],
    )


@router.get("/api/chat/sessions/{session_id}/usage")
async def usage(session: OwnedSession, sessions: Sessions, settings: SettingsDep) -> Usage:
    """Tokens the session's turns used, as reported by the model provider, with their cost and a split by model."""
    by_model = [_model_usage(m, settings) for m in await sessions.usage_by_model(session.id)]
    costs = [m.cost_usd for m in by_model if m.cost_usd is not None]
    return Usage(
        prompt_tokens=session.prompt_tokens,
        completion_tokens=session.completion_tokens,
        total_tokens=session.prompt_tokens + session.completion_tokens,
        cached_tokens=sum(m.cached_tokens for m in by_model),
        reasoning_tokens=sum(m.reasoning_tokens for m in by_model),
        cost_usd=round(sum(costs), 10) if costs else None,
        by_model=by_model,
    )


def _model_usage(m: ModelUsage, settings: Settings) -> ModelUsagePublic:
    price = settings.model_prices.get(m.model) if m.model is not None else None
    cost = cost_usd(
        price, prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens, cached_tokens=m.cached_tokens
    )
    return ModelUsagePublic(
        model=m.model,
        messages=m.messages,
        prompt_tokens=m.prompt_tokens,
        completion_tokens=m.completion_tokens,
        cached_tokens=m.cached_tokens,
        reasoning_tokens=m.reasoning_tokens,
        cost_usd=cost,
    )
