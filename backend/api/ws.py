"""WebSocket transport of turns: `GET /api/chat/sessions/{id}/ws`, over the same runner and streams as SSE.

Auth is `Authorization: Bearer <jwt>` or `?token=<jwt>` (browsers cannot set headers on a WebSocket); development
auth works as over HTTP. The handshake is accepted first and a refused socket is then closed with 4000 + the HTTP
status: 4401 (no valid token) or 4404 (missing session, or another user's). Closing before accepting would reach a
client as a bare HTTP 403, without the code. A socket is authorised only until its token's `exp`: then it is closed
with 4401 too, and the client reconnects with a fresh token (and `resume`s the turn it followed).

Client frames (`ws_schemas`): `message` (a `SendMessage` body) starts a turn and streams it; `cancel` stops the
session's running turn (`idle` if none); `ping` → `pong`; `resume {after?}` follows the running turn from a cursor
or from its start (`idle` if none); `tool_output {tool_call_id, output | error}` (a frontend tool's result),
`approval {tool_call_id, approved, reason?}` and `reply {tool_call_id, answer}` (to `ask_human`) answer calls that
wait for a person, and follow the continuation once nothing of their message waits (`waiting {tool_call_ids}`
until then). Server frames: `chunk {id, chunk}` per AI SDK chunk, `ask_human {tool_call_id, question, choices?}`
beside the chunk of an `ask_user` call, `done {task_id}` after
the turn's end, `heartbeat` while it is silent, and `error {code, message, details?, retry_after?}` for a refused
client frame (`invalid_request` when it fails the same validation as the HTTP bodies) or one whose handling failed
(`internal_error`); the socket stays open after an error. Opening the socket and each `message` count as one request
against the user's per-minute limit (over it: the socket is closed with 4429, a `message` gets `rate_limited`).

Frames are read while at most one forwarder task streams a turn, so `cancel` works mid-turn; a new `message` or
`resume` replaces the forwarder. A closed socket stops its forwarder, never the turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.types import Message

from backend.api.deps import Admission, Auth, Driver, HumanInputDep, Limits, Sessions, SettingsDep
from backend.api.submission import answerer_of, submit_turn
from backend.api.ws_schemas import (
    ApprovalFrame,
    CancelFrame,
    ClientFrame,
    Done,
    ErrorFrame,
    Heartbeat,
    Idle,
    PingFrame,
    Pong,
    ReplyFrame,
    ResumeFrame,
    SendFrame,
    ServerFrame,
    ToolOutputFrame,
    Waiting,
    ask_human_of,
    chunk_frame,
    client_frame,
)
from backend.auth import Principal
from backend.chat.human_input import Answer, Approval, HumanInput, ToolOutput
from backend.chat.turn_admission import TurnAdmission
from backend.chat.turn_driver import TurnDriver
from backend.config import Settings
from backend.errors import CopilotError, NotFound, PayloadTooLarge
from backend.observability.logs import bind
from backend.store.sessions import SessionStore
from backend.streams.user_limits import UserLimits

log = logging.getLogger("copilot.ws")

router = APIRouter(tags=["chat"])


@router.websocket("/api/chat/sessions/{session_id}/ws")
async def turn_socket(
    websocket: WebSocket,
    session_id: str,
    auth: Auth,
    settings: SettingsDep,
    sessions: Sessions,
    limits: Limits,
    admission: Admission,
    driver: Driver,
    human_input: HumanInputDep,
    token: Annotated[str | None, Query()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Send messages, cancel, resume and receive the replies of one session over one socket."""
    await websocket.accept()
    try:
        user = await auth.authenticate(authorization or (f"Bearer {token}" if token else None))
        bind(user_id=user.user_id, session_id=session_id)  # on the socket's log lines from here on
        await limits.check_request(user)
        session = await sessions.get(_session_uuid(session_id), user.user_id)
    except CopilotError as e:
        await websocket.close(code=4000 + e.status_code, reason=e.message.encode()[:123].decode(errors="ignore"))
        return
    services = _Services(settings, sessions, limits, admission, driver, human_input)
    connection = _Connection(websocket, services, user, session.id)
    try:
        await connection.serve()
    finally:
        await connection.stop_forwarding()


@dataclass(frozen=True, slots=True)
class _Services:
    settings: Settings
    sessions: SessionStore
    limits: UserLimits
    admission: TurnAdmission
    driver: TurnDriver
    human_input: HumanInput


class _Connection:
    """One user's socket on one session: answers client frames and runs at most one forwarder."""

    def __init__(self, websocket: WebSocket, services: _Services, user: Principal, session_id: uuid.UUID) -> None:
        self._ws = websocket
        self._services = services
        self._user = user
        self._session_id = session_id
        # The reader and the forwarder both send; uvicorn's protocols do not promise concurrent sends are safe.
        self._send_lock = asyncio.Lock()
        self._forwarder: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        """Answer client frames until the client goes away or its token expires."""
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                await self._handle(self._parse(message))
            except ValidationError as e:
                await self._send(ErrorFrame(code="invalid_request", message=_summary(e)))
            except CopilotError as e:
                await self._send(ErrorFrame.of(e))
            except WebSocketDisconnect:
                raise
            except Exception:
                # One frame's failure (a database blip, a bug) is that frame's error, not the end of the socket.
                log.exception("a WebSocket frame on session %s failed", self._session_id)
                await self._send(ErrorFrame(code="internal_error", message="the frame could not be handled; retry"))

    async def _receive(self) -> Message:
        """The next client message, or a disconnect once the token expired: the socket is closed with 4401 then.

        Only the wait for a frame is bounded, so a frame being handled (a turn being submitted) is never cut short.
        """
        expires_at = self._user.expires_at
        if expires_at is None:
            return await self._ws.receive()
        window = asyncio.timeout(max(0.0, expires_at - time.time()))
        try:
            async with window:
                return await self._ws.receive()
        except TimeoutError:
            if not window.expired():
                raise
        await self.stop_forwarding()
        async with self._send_lock:
            await self._ws.close(code=4401, reason="token expired: reconnect with a fresh one")
        return {"type": "websocket.disconnect", "code": 4401}

    def _parse(self, message: Message) -> ClientFrame:
        raw: str | bytes = message.get("text") or message.get("bytes") or b""
        limit = self._services.settings.max_body_bytes
        if len(raw) > limit:
            raise PayloadTooLarge(f"frame exceeds {limit} bytes")
        return client_frame.validate_json(raw)

    async def _handle(self, frame: ClientFrame) -> None:
        services = self._services
        match frame:
            case PingFrame():
                await self._send(Pong())
            case SendFrame():
                await services.limits.check_request(self._user)
                session = await services.sessions.get(self._session_id, self._user.user_id)  # fresh: title, deletion
                submitted = await submit_turn(
                    frame,
                    session,
                    self._user,
                    admission=services.admission,
                    human_input=services.human_input,
                    settings=services.settings,
                    limits=services.limits,
                )
                await self._forward(submitted.turn_id)
            case ToolOutputFrame() | ApprovalFrame() | ReplyFrame():
                await services.limits.check_request(self._user)
                await self._answer(frame)
            case ResumeFrame():
                active = await services.admission.active_task(self._session_id)
                if active is None:
                    await self._send(Idle())
                else:
                    await self._forward(active[0], after=frame.after or "0")
            case CancelFrame():
                # The followed stream shows the end (`abort`, `finish`, `done`); only "nothing to stop" is said here.
                if await services.admission.cancel(self._session_id) is None:
                    await self._send(Idle())

    async def _answer(self, frame: ToolOutputFrame | ApprovalFrame | ReplyFrame) -> None:
        """Answer a call that waits; follow the continuation once nothing of its message waits any more."""
        services = self._services
        session = await services.sessions.get(self._session_id, self._user.user_id)
        declared = None
        answer: Answer
        match frame:
            case ToolOutputFrame():
                answer = ToolOutput(frame.tool_call_id, frame.output, frame.error)
                declared = None if frame.tools is None else [t.declaration() for t in frame.tools]
            case ReplyFrame():
                answer = ToolOutput(frame.tool_call_id, frame.answer)
            case ApprovalFrame():
                answer = Approval(frame.tool_call_id, frame.approved, frame.reason)
        answerer = answerer_of(self._user, services.settings, services.limits)
        answered = await services.human_input.answer_call(session, answerer, answer, declared=declared)
        if answered.task_id is None:
            await self._send(Waiting(tool_call_ids=[c.tool_call_id for c in answered.waiting]))
        else:
            await self._forward(answered.task_id)

    async def _forward(self, turn_id: str, after: str = "0") -> None:
        await self.stop_forwarding()
        self._forwarder = asyncio.create_task(self._pump(turn_id, after), name=f"ws-forward-{turn_id}")

    async def stop_forwarding(self) -> None:
        if self._forwarder is not None:
            self._forwarder.cancel()
            await asyncio.wait([self._forwarder])
            self._forwarder = None

    async def _pump(self, turn_id: str, after: str) -> None:
        """Send the turn's entries after `after` until its end, then `done`."""
        heartbeat = self._services.settings.heartbeat_seconds
        try:
            follow = self._services.driver.follow(turn_id, after=after, heartbeat_seconds=heartbeat)
            async for entry_id, chunk in follow:
                await self._send(Heartbeat() if chunk is None else chunk_frame(entry_id, chunk))
                if chunk is not None and (question := ask_human_of(chunk)) is not None:
                    await self._send(question)
            await self._send(Done(task_id=turn_id))
        except WebSocketDisconnect:
            return  # the reader sees the disconnect too and cleans up
        except Exception:
            log.exception("following turn %s over a WebSocket failed", turn_id)
            with suppress(WebSocketDisconnect):
                await self._send(ErrorFrame(code="internal_error", message="lost the reply's stream; send resume"))

    async def _send(self, frame: ServerFrame | str) -> None:
        text = frame if isinstance(frame, str) else frame.encode()
        async with self._send_lock:
            await self._ws.send_text(text)


def _session_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as e:
        raise NotFound("session not found") from e


def _summary(error: ValidationError) -> str:
    problems = (f"{'.'.join(str(p) for p in e['loc']) or 'frame'}: {e['msg']}" for e in error.errors()[:5])
    return "; ".join(problems)
