"""AG-UI: run the agent (`POST /api/agui`, what `HttpAgent` and the CopilotKit runtime call), replay a run, cancel it.

The same turns as the AI SDK routes (`chat.py`): a run is a turn, admitted, stored and followed the same way, and
its events are the turn stream's chunks translated to AG-UI (`backend/chat/agui_stream.py`). A thread is a
session of the caller: its id when `threadId` is one (so the other routes reach the same conversation), else an id
derived from the caller and the `threadId`; it is created on its first run.

Human in the loop the AG-UI way: `tools` are the run's frontend tools; a run whose messages end with tool messages
(or that carries `resume` entries for approvals) answers the calls an earlier run left waiting
(`agui_answers.py`) and streams their continuation, whichever pod ran the run that asked.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Annotated, Any

from ag_ui.core import BaseEvent, Message, MessagesSnapshotEvent
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from backend.api.agui_answers import answers_of, trailing_tool_messages
from backend.api.agui_history import agui_messages, conflicts, reply_steps
from backend.api.agui_schemas import RunAgentInput
from backend.api.chat_schemas import CancelResult
from backend.api.deps import (
    Admission,
    AguiRunsDep,
    CurrentUser,
    Driver,
    HumanInputDep,
    Limits,
    Sessions,
    SettingsDep,
    Turns,
)
from backend.api.inputs import ClientId, StreamCursor
from backend.api.submission import answerer_of
from backend.chat.agui_sse import AGUI_HEADERS, agui_sse
from backend.chat.agui_stream import AguiTranslator
from backend.chat.human_input import Answerer
from backend.chat.turn_admission import turn_id_for
from backend.chat.turn_state import UserMessage
from backend.errors import BadRequest, Conflict, Gone, NotFound, ShuttingDown
from backend.store.models import ChatMessage, ChatSession
from backend.store.sessions import SessionStore
from backend.streams.agui_runs import AguiRun, AguiRuns
from backend.streams.turns import position_of
from backend.tools.frontend import FrontendTool

router = APIRouter(tags=["ag-ui"])

_THREAD_NAMESPACE = uuid.UUID("2b1d7c36-5f0e-4a8e-9c61-8a7f4e0d3b52")
_SSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}, "description": "AG-UI events"}}
_PAGE_SIZE = 500


def thread_session_id(thread_id: str, user_id: str) -> uuid.UUID:
    """The session of an AG-UI thread: `threadId` itself when it is a UUID, else one derived from the caller and it
    (two users' threads named alike stay apart)."""
    try:
        return uuid.UUID(thread_id)
    except ValueError:
        return uuid.uuid5(_THREAD_NAMESPACE, f"{user_id}\n{thread_id}")


@router.post("/api/agui", response_class=StreamingResponse, responses=_SSE)
async def run_agent(
    body: RunAgentInput,
    user: CurrentUser,
    sessions: Sessions,
    admission: Admission,
    human_input: HumanInputDep,
    driver: Driver,
    limits: Limits,
    runs: AguiRunsDep,
    settings: SettingsDep,
) -> StreamingResponse:
    """Run the agent on a thread (AG-UI `RunAgentInput`) and stream the run as AG-UI events. The last message is
    the user's new one, or tool messages answering calls that wait (with `resume` for approvals: the run is then
    their continuation); a history that says otherwise than storage gets a `MESSAGES_SNAPSHOT` of what is stored
    first. The run keeps going if the client disconnects: replay it with `GET /api/agui/runs/{runId}/events`."""
    if admission.draining:
        raise ShuttingDown("this server is shutting down; send the message again")
    tools = None
    if body.tools is not None:
        tools = human_input.check_frontend_tools([tool.declaration() for tool in body.tools])
    answerer = answerer_of(user, settings, limits)
    tool_messages = trailing_tool_messages(body.messages)
    if tool_messages or body.resume:
        session = await sessions.get(thread_session_id(body.thread_id, user.user_id), user.user_id)
        run = await _answer(body, session, answerer, human_input, sessions, runs, tools, tool_messages)
        sent = [m.tool_call_id for m in tool_messages if m.tool_call_id]
        return _follow(body, driver, settings, run.turn_id, [], client_results=sent, first_step=run.first_step)
    new = body.messages[-1] if body.messages else None
    if new is None or new.role != "user":
        raise BadRequest("the last message must be the user's new message, or tool messages answering calls")
    text = new.text()
    if not text.strip():
        raise BadRequest("the message is empty")
    if len(text) > settings.max_message_chars:
        raise BadRequest(f"the message is longer than {settings.max_message_chars} characters")
    session_id = thread_session_id(body.thread_id, user.user_id)
    turn_id = turn_id_for(session_id, new.id)
    await admission.refuse_if_full(turn_id)  # before the thread is created or the run bound
    session, _ = await sessions.get_or_create(session_id, user.user_id)
    history = [m.model_dump(by_alias=True) for m in body.messages[:-1]]
    stored = await _stored(sessions, session.id)
    contradicts = conflicts(history, _snapshot(session.id, _before_turn(stored, turn_id)))
    if not await runs.bind(AguiRun(body.run_id, turn_id, body.thread_id, user.user_id)):
        raise Conflict("this runId is taken; name each run with a new id")
    message = UserMessage(text=text, client_message_id=new.id, page_context=body.page_context())
    if tools is not None:
        await human_input.declare_tools(session.id, tools)
        message = replace(message, frontend_tools=tools)
    submitted = await admission.submit(
        session, user.user_id, message, is_authenticated=answerer.is_authenticated, limited=answerer.limited
    )
    prelude: list[BaseEvent] = []
    if contradicts:
        # Two snapshots: a client keeps the messages a snapshot names where they were and appends the others, so the
        # stored history goes first without the new message (which drops the client's copy), then with it (at the end).
        stored = await _stored(sessions, session.id)
        for part in (_before_turn(stored, submitted.turn_id), _through_turn(stored, submitted.turn_id)):
            prelude.append(MessagesSnapshotEvent(messages=_snapshot(session.id, part)))
    return _follow(body, driver, settings, submitted.turn_id, prelude)


@router.get("/api/agui/runs/{run_id}/events", response_class=StreamingResponse, responses=_SSE)
async def replay_run(
    run_id: ClientId,
    user: CurrentUser,
    runs: AguiRunsDep,
    turns: Turns,
    sessions: Sessions,
    driver: Driver,
    settings: SettingsDep,
    after: Annotated[StreamCursor | None, Query()] = None,
    snapshot: Annotated[bool, Query()] = False,
    last_event_id: Annotated[StreamCursor | None, Header()] = None,
) -> StreamingResponse:
    """A run's events after a cursor (`Last-Event-ID` or `?after=`; from its start by default), then live until it
    ends, from any pod. `snapshot=true` starts with a `MESSAGES_SNAPSHOT` of the thread as stored before the run
    (then the run is replayed from its start: no cursor). 404 for an unknown run or another user's, 410 when its
    stream has expired."""
    run = await _owned_run(runs, run_id, user.user_id)
    info = await turns.info(run.turn_id)
    if info is None:
        if await turns.owner_of_expired(run.turn_id) == user.user_id:
            raise Gone("this run's stream has expired; load the thread's messages instead")
        raise NotFound("run not found")
    cursor = last_event_id or after
    if snapshot and cursor:
        raise BadRequest("a snapshot comes with the whole run: leave out the cursor")
    if cursor is not None and position_of(run.turn_id, cursor) is None:
        cursor = None  # a cursor of another run: replay this one from its start
    prelude: list[BaseEvent] = []
    if snapshot:
        session_id = uuid.UUID(info.session_id)
        through = _through_turn(await _stored(sessions, session_id), run.turn_id)
        prelude.append(MessagesSnapshotEvent(messages=_snapshot(session_id, through)))
    entries = driver.follow(run.turn_id, after="0", heartbeat_seconds=settings.heartbeat_seconds)
    translator = AguiTranslator(thread_id=run.thread_id, run_id=run.run_id, first_step=run.first_step)
    return _response(agui_sse(entries, translator, after=cursor, prelude=prelude), run.turn_id)


@router.post("/api/agui/runs/{run_id}/cancel")
async def cancel_run(
    run_id: ClientId, user: CurrentUser, runs: AguiRunsDep, turns: Turns, admission: Admission
) -> CancelResult:
    """Stop a run, whichever pod runs it (closing the connection does not: the run is durable). Its partial reply
    is stored, marked interrupted, and its stream ends with `RUN_FINISHED` whose outcome is `cancelled`."""
    run = await _owned_run(runs, run_id, user.user_id)
    info = await turns.info(run.turn_id)
    if info is None or info.status != "running":
        return CancelResult(task_id=run.turn_id, status=info.status if info else "unknown")
    active = await admission.active_task(uuid.UUID(info.session_id))
    if active is None or active[0] != run.turn_id:
        return CancelResult(task_id=run.turn_id, status="unknown")
    await admission.cancel(uuid.UUID(info.session_id))
    info = await turns.info(run.turn_id)
    return CancelResult(task_id=run.turn_id, status=info.status if info else "unknown")


async def _answer(
    body: RunAgentInput,
    session: ChatSession,
    answerer: Answerer,
    human_input: HumanInputDep,
    sessions: SessionStore,
    runs: AguiRuns,
    tools: tuple[FrontendTool, ...] | None,
    tool_messages: list[Any],
) -> AguiRun:
    """Apply the run's answers (`HumanInput.answer`, passing over results of calls that wait for nobody, as for
    useChat) and name the run after their continuation's turn. A resent answer finds the same continuation."""
    taken = await runs.get(body.run_id)
    if taken is not None and taken.user_id != answerer.user_id:
        raise Conflict("this runId is taken; name each run with a new id")
    try:
        answers = answers_of(tool_messages, body.resume or [])
    except ValueError as e:
        raise BadRequest(str(e)) from e
    task_id = await human_input.answer_message(session, answerer, answers, tools=tools)
    run = AguiRun(
        body.run_id,
        task_id,
        body.thread_id,
        answerer.user_id,
        first_step=await _steps_before(sessions, human_input, session, [a.tool_call_id for a in answers]),
    )
    if not await runs.bind(run):
        raise Conflict("this runId is taken; name each run with a new id")
    return run


async def _steps_before(
    sessions: SessionStore, human_input: HumanInputDep, session: ChatSession, call_ids: list[str]
) -> int:
    """The steps of the reply up to the one that asked the answered calls: the continuation's first step message
    is numbered after them (as `agui_messages` numbers the stored ones), whatever it has stored since."""
    step_end = 0
    for call_id in call_ids:
        call = await human_input.call(session.id, call_id)
        if call is not None:
            step_end = max(step_end, call.step_end)
    stored = await _stored(sessions, session.id)
    return reply_steps([m for m in stored if m.sequence <= step_end])


def _follow(
    body: RunAgentInput,
    driver: Driver,
    settings: SettingsDep,
    turn_id: str,
    prelude: list[BaseEvent],
    *,
    client_results: list[str] | None = None,
    first_step: int = 0,
) -> StreamingResponse:
    """Stream `turn_id` as this run. `client_results`: calls the run's own tool messages answer, whose results the
    client holds already (the continuation's `TOOL_CALL_RESULT` for them is left out)."""
    entries = driver.follow(turn_id, after="0", heartbeat_seconds=settings.heartbeat_seconds)
    translator = AguiTranslator(
        thread_id=body.thread_id,
        run_id=body.run_id,
        outcomes=body.protocol_version is not None,
        client_results=client_results or (),
        first_step=first_step,
    )
    return _response(agui_sse(entries, translator, prelude=prelude), turn_id)


def _response(body: Any, turn_id: str) -> StreamingResponse:
    headers = {**AGUI_HEADERS, "x-copilot-task-id": turn_id}
    return StreamingResponse(body, headers=headers, media_type="text/event-stream")


async def _owned_run(runs: AguiRunsDep, run_id: str, user_id: str) -> AguiRun:
    run = await runs.get(run_id)
    if run is None or run.user_id != user_id:
        raise NotFound("run not found")
    return run


async def _stored(sessions: SessionStore, session_id: uuid.UUID) -> list[ChatMessage]:
    return [m async for page in sessions.stored_messages(session_id, page_size=_PAGE_SIZE) for m in page]


def _snapshot(session_id: uuid.UUID, stored: list[ChatMessage]) -> list[Message]:
    def reply_id(user: ChatMessage) -> str | None:
        # The stream's `messageId` (`msg-<turn id>`), so stored steps keep the ids they streamed with.
        return f"msg-{turn_id_for(session_id, user.client_message_id)}" if user.client_message_id else None

    return agui_messages(stored, reply_id)


def _turn_index(stored: list[ChatMessage], turn_id: str) -> int | None:
    """Where the user message that started `turn_id` is in `stored`."""
    for i in range(len(stored) - 1, -1, -1):
        m = stored[i]
        if m.role == "user" and m.client_message_id and turn_id_for(m.session_id, m.client_message_id) == turn_id:
            return i
    return None


def _before_turn(stored: list[ChatMessage], turn_id: str) -> list[ChatMessage]:
    """The history a run's client had before it added its message: all of it, or what came before that message
    when it is stored already (a resent run)."""
    index = _turn_index(stored, turn_id)
    return stored if index is None else stored[:index]


def _through_turn(stored: list[ChatMessage], turn_id: str) -> list[ChatMessage]:
    """The history up to the run's own user message: what the run's events then add to."""
    index = _turn_index(stored, turn_id)
    return stored if index is None else stored[: index + 1]
