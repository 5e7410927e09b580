"""Answers from a person to the calls a turn left waiting: a frontend tool's output, an answer to `ask_user`, an
approval or a denial, whichever transport brings them (useChat's next request, the REST endpoints, the WebSocket).

An answer is accepted only for a call of the caller's own session (the routes check ownership) that still waits, and
only once: it moves the call's state by compare-and-set (`store/awaiting.py`), so a resend, or the same answer on two
pods, changes nothing the second time and finds the same continuation. When the last waiting call of an assistant
message is answered, the conversation continues in that message (`TurnAdmission.resume`). Unanswered calls expire
after `COPILOT_HUMAN_INPUT_TIMEOUT_SECONDS` into an error the model reads (`expire_overdue`, run by the supervisor);
a new user message closes them as not answered (in the append that stores it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from backend.chat.resumption import result_tokens, tool_result_text
from backend.chat.turn_admission import TurnAdmission
from backend.chat.turn_state import Resume, TurnServices
from backend.errors import BadRequest, Conflict, Gone, NotFound, ShuttingDown
from backend.store.awaiting import AwaitingCall, AwaitingCalls
from backend.store.models import AwaitingState, ChatSession
from backend.tools.frontend import FrontendTool, frontend_tools

log = logging.getLogger("copilot.human_input")

DENIED_TEXT = "The user denied this call; it did not run."
_REASON = " Reason: "
EXPIRED_TEXT = "No answer came from the user in time; this call did not run."


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """The result of a frontend tool (or the answer to `ask_user`): `output`, or `error_text` when it failed."""

    tool_call_id: str
    output: Any = None
    error_text: str | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    tool_call_id: str
    approved: bool
    reason: str | None = None


Answer = ToolOutput | Approval


@dataclass(frozen=True, slots=True)
class Answered:
    task_id: str | None
    """The continuation's turn (follow it like any turn); None while calls of the message still wait."""
    waiting: list[AwaitingCall]
    """The calls of the message that still wait for an answer."""


@dataclass(frozen=True, slots=True)
class Answerer:
    """Who answers: the session's owner."""

    user_id: str
    is_authenticated: bool
    limited: bool = True


class HumanInput:
    def __init__(self, awaiting: AwaitingCalls, admission: TurnAdmission, services: TurnServices) -> None:
        self._awaiting = awaiting
        self._admission = admission
        self._services = services

    @property
    def draining(self) -> bool:
        """This pod takes no new turns (it is shutting down): an answer's continuation would be one."""
        return self._admission.draining

    async def waiting(self, session_id: Any) -> list[AwaitingCall]:
        """The session's calls that wait for a person now (expired ones left out)."""
        now = datetime.now(UTC)
        return [c for c in await self._awaiting.open_calls(session_id) if c.state == "waiting" and c.expires_at > now]

    async def call(self, session_id: Any, tool_call_id: str) -> AwaitingCall | None:
        """The call `tool_call_id` of the session if it waited for a person, whatever its state; else None."""
        return await self._awaiting.find(session_id, tool_call_id)

    def check_frontend_tools(self, declared: Sequence[dict[str, Any]]) -> tuple[FrontendTool, ...]:
        """Declared frontend tools, checked against the server's tool names; `BadRequest` naming the problem."""
        try:
            return frontend_tools(declared, taken=self._services.tools)
        except ValueError as e:
            raise BadRequest(str(e)) from e

    async def declare_tools(self, session_id: Any, tools: tuple[FrontendTool, ...]) -> None:
        """Remember the session's frontend tools, for continuations whose answer does not repeat them."""
        await self._awaiting.set_frontend_tools(session_id, [t.declaration() for t in tools])

    async def answer(
        self,
        session: ChatSession,
        answerer: Answerer,
        answers: Sequence[Answer],
        *,
        tools: tuple[FrontendTool, ...] | None = None,
        strict: bool = True,
    ) -> Answered:
        """Apply `answers` and continue the message once none of its calls waits any more. `tools`: the frontend
        tools the answering request declared (None: the session's last). `strict` (one call named by the client):
        an unknown call is `NotFound`; otherwise (useChat sends its whole assistant message back) the parts that
        answer nothing waiting, and those of earlier messages, are passed over."""
        calls_by_id = await self._awaiting.find_all(session.id, [a.tool_call_id for a in answers])
        found: list[tuple[Answer, AwaitingCall]] = []
        for answer in answers:
            call = calls_by_id.get(answer.tool_call_id)
            if call is not None:
                found.append((answer, call))
            elif strict:
                raise NotFound(f"no call {answer.tool_call_id!r} of this session waits for an answer")
        if not found:
            raise BadRequest("nothing in this request answers a tool call that waits for the user")
        asked_in = max(call.asked_in for _, call in found)
        for answer, call in found:
            if call.asked_in == asked_in:
                await self._apply(session, answer, call)
        calls = await self._awaiting.asked_with(session.id, asked_in)
        still = [c for c in calls if c.state == "waiting"]
        if still:
            return Answered(None, still)
        asked = calls[0]
        moved_on = session.message_count > asked.step_end
        if moved_on and not await self._admission.continuation_known(session.id, asked_in):
            # The conversation went on after these calls (their continuation ran and its stream expired, or a
            # new message came): never continue the same message twice.
            raise Conflict("these calls were answered and the conversation has moved on")
        if tools is None:
            stored = await self._awaiting.frontend_tools(session.id)
            tools = self.check_frontend_tools(stored) if stored else ()
        # The reply's message id: a continuation that asked again extends the same message as the turn before it.
        first = await self._awaiting.reply_turn_id(session.id, asked_in) or asked.turn_id
        resume = Resume(message_id=f"msg-{first}", asked_in=asked_in)
        submitted = await self._admission.resume(
            session,
            answerer.user_id,
            resume,
            frontend_tools=tools,
            is_authenticated=answerer.is_authenticated,
            limited=answerer.limited,
        )
        return Answered(submitted.turn_id, [])

    async def answer_call(
        self,
        session: ChatSession,
        answerer: Answerer,
        answer: Answer,
        *,
        declared: Sequence[dict[str, Any]] | None = None,
    ) -> Answered:
        """One answer to a call the client names (the REST endpoints, the WebSocket frames), with the frontend
        tools the request declared (None: the session's last). `ShuttingDown` while this pod drains: the
        continuation would be a new turn here."""
        if self.draining:
            raise ShuttingDown("this server is shutting down; send the answer again")
        tools = None if declared is None else self.check_frontend_tools(declared)
        if tools is not None:
            await self.declare_tools(session.id, tools)
        return await self.answer(session, answerer, [answer], tools=tools, strict=True)

    async def answer_message(
        self,
        session: ChatSession,
        answerer: Answerer,
        answers: Sequence[Answer],
        *,
        tools: tuple[FrontendTool, ...] | None,
    ) -> str:
        """The answers a client sends back with its next request (useChat's assistant message, an AG-UI run's tool
        messages): taken like `answer` (strict=False), the request's frontend tools declared first; the
        continuation's task id. `Conflict` (with `waiting`) while other calls of the message still wait."""
        if tools is not None:
            await self.declare_tools(session.id, tools)
        answered = await self.answer(session, answerer, answers, tools=tools, strict=False)
        if answered.task_id is None:
            waiting = [c.tool_call_id for c in answered.waiting]
            raise Conflict("other calls of this message still wait for an answer", waiting=waiting)
        return answered.task_id

    async def expire_overdue(self) -> int:
        """Close the calls that waited longer than the timeout with an error the model reads; how many closed."""
        closed = 0
        for session_id, tool_call_id in await self._awaiting.overdue():
            content = _error_json("expired", EXPIRED_TEXT)
            if await self._awaiting.resolve(
                session_id,
                tool_call_id,
                expected=("waiting", "approved"),
                state="expired",
                content=content,
                token_count=result_tokens(self._services, tool_call_id, content),
            ):
                closed += 1
        if closed:
            log.info("closed %d call(s) that waited for the user past the timeout", closed)
        return closed

    async def _apply(self, session: ChatSession, answer: Answer, call: AwaitingCall) -> None:
        if isinstance(answer, Approval) != (call.kind == "approval"):
            wants = "an approval (approved: true or false)" if call.kind == "approval" else "an output or an error"
            raise BadRequest(f"call {answer.tool_call_id!r} waits for {wants}")
        if call.state == "waiting":
            if call.expires_at <= datetime.now(UTC):
                await self.expire_overdue()
                raise Gone("this call waited too long for an answer and expired; send a new message instead")
            if await self._resolve(session, call, answer):
                return
            call = await self._awaiting.find(session.id, answer.tool_call_id) or call  # settled meanwhile
        if call.state == "expired":
            raise Gone("this call waited too long for an answer and expired; send a new message instead")
        if call.state == "unanswered":
            raise Conflict("a newer message closed this call as not answered")
        # answered already: a resend changes nothing

    async def _resolve(self, session: ChatSession, call: AwaitingCall, answer: Answer) -> bool:
        resolve, services = self._awaiting.resolve, self._services
        state: AwaitingState
        if isinstance(answer, Approval):
            if answer.approved:
                return await resolve(session.id, call.tool_call_id, expected=("waiting",), state="approved")
            content = _error_json("denied", denial_text(answer.reason))
            state = "denied"
        elif answer.error_text is not None:
            content, state = _error_json("tool_error", answer.error_text), "failed"
        else:
            content, state = tool_result_text(services, answer.output), "answered"
        return await resolve(
            session.id,
            call.tool_call_id,
            expected=("waiting",),
            state=state,
            content=content,
            token_count=result_tokens(services, call.tool_call_id, content),
        )


def denial_text(reason: str | None) -> str:
    """What the model reads for a denied call: `DENIED_TEXT`, and the user's reason when there is one."""
    return DENIED_TEXT if not reason else f"{DENIED_TEXT}{_REASON}{reason}"


def denial_reason(text: str) -> str | None:
    """The user's reason in a stored `denial_text`, so the history shows the approval the client sent."""
    prefix = DENIED_TEXT + _REASON
    return text.removeprefix(prefix) if text.startswith(prefix) else None


def _error_json(kind: str, message: str) -> str:
    return orjson.dumps({"error": {"type": kind, "message": message}}).decode()
