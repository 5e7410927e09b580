"""Stored messages as AI SDK `UIMessage`s, the shape `useChat({ messages })` starts from.

A reply is what the stream assembles into one assistant `UIMessage`: every assistant message and tool result after
a user message, each stored step (one model call) opening with a `step-start` part, then its text, then one
`tool-<name>` part per call in its final state (`output-available`, `output-error`, or `input-available` when no
result was stored). A call that waits for a person shows what it waits for: `input-available` (a frontend tool or
`ask_user`: the client answers with `addToolOutput`) or `approval-requested` (ai 6 and 7); a denied call is
`output-denied`. Approval parts keep their `approval` once settled (`{id, approved: true}` on the approved call's
output or error, `{id, approved: false, reason?}` on a denied one), as the ai 6 and 7 clients keep it. For ai 5 a
call that needed approval is followed, at the end of its step, by the `data-tool-approval-request` part its stream
sent (ai 5 keeps it in the message), and a denied call is the `output-error` its stream sent. A reply's id is the
stream's `messageId` (`msg-<task id>`) when its user message came with a client message id, so a client sees the
same id live and from history. A step's stored reasoning comes first, as a `reasoning` part, as it streamed before
the step's text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from backend.chat.human_input import denial_reason
from backend.chat.turn_state import INTERRUPTED_MARK
from backend.chat.ui_stream import approval_id_of, approval_request_data
from backend.store.models import ChatMessage


class _Part(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class TextPart(_Part):
    type: Literal["text"] = "text"
    text: str
    state: Literal["done"] = "done"


class ReasoningPart(_Part):
    type: Literal["reasoning"] = "reasoning"
    id: str
    """`reasoning-<n>`, the n-th reasoning part of the reply (from 0), as the stream numbered it."""
    text: str
    state: Literal["done"] = "done"


class StepStartPart(_Part):
    type: Literal["step-start"] = "step-start"


class ToolCalled(_Part):
    """A call with no stored result (its turn was cut off before the tool answered). `type` is `tool-<name>`."""

    type: str = Field(pattern=r"^tool-")
    tool_call_id: str
    state: Literal["input-available"] = "input-available"
    input: Any


class Approval(_Part):
    id: str
    approved: bool | None = Field(default=None, exclude_if=lambda v: v is None)
    reason: str | None = Field(default=None, exclude_if=lambda v: v is None)


class ToolAnswered(_Part):
    type: str = Field(pattern=r"^tool-")
    tool_call_id: str
    state: Literal["output-available"] = "output-available"
    input: Any
    output: Any
    """The stored result (for a long-running tool still at work: its `operation_pending` note)."""
    approval: Approval | None = Field(default=None, exclude_if=lambda v: v is None)
    """For a call that ran once approved: the approval, as the client keeps it on the part."""


class ToolFailed(_Part):
    type: str = Field(pattern=r"^tool-")
    tool_call_id: str
    state: Literal["output-error"] = "output-error"
    input: Any
    error_text: str
    approval: Approval | None = Field(default=None, exclude_if=lambda v: v is None)


class ToolApprovalAsked(_Part):
    """A call that waits for the user's approval (`approval-requested`), or was approved and has not run yet
    (`approval-responded`)."""

    type: str = Field(pattern=r"^tool-")
    tool_call_id: str
    state: Literal["approval-requested", "approval-responded"]
    input: Any
    approval: Approval


class ToolDenied(_Part):
    type: str = Field(pattern=r"^tool-")
    tool_call_id: str
    state: Literal["output-denied"] = "output-denied"
    input: Any
    approval: Approval


class ApprovalRequested(_Part):
    """ai 5, which has no approval state: the approval request as the stream sent it (`ui_stream.py`)."""

    type: Literal["data-tool-approval-request"] = "data-tool-approval-request"
    id: str
    data: dict[str, Any]


UIPart = (
    TextPart
    | ReasoningPart
    | StepStartPart
    | ToolCalled
    | ToolAnswered
    | ToolFailed
    | ToolApprovalAsked
    | ToolDenied
    | ApprovalRequested
)


class UIMessage(_Part):
    """An AI SDK `UIMessage` (no metadata)."""

    id: str
    role: Literal["user", "assistant"]
    parts: list[UIPart]


def ui_messages(
    stored: Iterable[ChatMessage], reply_id: Callable[[ChatMessage], str | None], *, approvals: bool = True
) -> list[UIMessage]:
    """`stored` (oldest first) as `UIMessage`s. `reply_id(user message)` names the reply to that message (None: the
    reply is named after its first stored row). `approvals`: the client knows approval states (ai 6 and 7); ai 5
    gets a call waiting for approval as `input-available` and a denied one as its error."""
    out: list[UIMessage] = []
    reply: UIMessage | None = None
    named: str | None = None
    calls: dict[str, tuple[list[UIPart], int]] = {}
    """Where each call's part sits, so its result can replace it."""
    for message in stored:
        if message.role == "user":
            text = TextPart(text=message.content or "")
            out.append(UIMessage(id=message.client_message_id or str(message.id), role="user", parts=[text]))
            reply, named = None, reply_id(message)
            continue
        if message.role == "assistant":
            if reply is None:
                reply = UIMessage(id=named or f"msg-{message.id}", role="assistant", parts=[])
                out.append(reply)
            for part in _step(message, sum(isinstance(p, ReasoningPart) for p in reply.parts)):
                if isinstance(part, ToolCalled):
                    calls[part.tool_call_id] = (reply.parts, len(reply.parts))
                reply.parts.append(part)
        elif message.role == "tool" and (place := calls.pop(message.tool_call_id or "", None)) is not None:
            parts, index = place
            called = parts[index]
            assert isinstance(called, ToolCalled)
            parts[index] = _settled(called, message, approvals)
            if message.awaiting == "approval" and not approvals:
                # Its stream sent the request after the step's calls, in call order: the step's results are stored
                # in that order, right after it, so the step's parts still end the reply here.
                parts.append(_approval_requested(called))
    return out


def _approval_requested(called: ToolCalled) -> ApprovalRequested:
    data = approval_request_data(called.tool_call_id, called.type.removeprefix("tool-"), called.input)
    return ApprovalRequested(id=approval_id_of(called.tool_call_id), data=data)


def _step(message: ChatMessage, reasoning_parts_before: int) -> list[UIPart]:
    parts: list[UIPart] = [StepStartPart()]
    if message.reasoning:
        parts.append(ReasoningPart(id=f"reasoning-{reasoning_parts_before}", text=message.reasoning))
    text = (message.content or message.refusal or "").removesuffix(INTERRUPTED_MARK).rstrip()
    if text:
        parts.append(TextPart(text=text))
    for call in message.tool_calls or []:
        function = call.get("function") or {}
        parts.append(
            ToolCalled(
                type=f"tool-{function.get('name', 'unknown')}",
                tool_call_id=str(call.get("id", "")),
                input=_parsed(function.get("arguments") or "{}"),
            )
        )
    return parts


def _settled(called: ToolCalled, message: ChatMessage, approvals: bool) -> UIPart:
    """The call with its stored result: the output, or the error as the stream's `tool-output-error` gave it; for a
    call that waited for a person, where it stands."""
    state, kind = message.awaiting_state, message.awaiting
    if state in ("waiting", "approved"):
        if kind != "approval" or not approvals:
            return called
        asked: Literal["approval-requested", "approval-responded"] = (
            "approval-requested" if state == "waiting" else "approval-responded"
        )
        approval = Approval(id=approval_id_of(called.tool_call_id), approved=True if state == "approved" else None)
        return ToolApprovalAsked(
            type=called.type, tool_call_id=called.tool_call_id, state=asked, input=called.input, approval=approval
        )
    output = _parsed(message.content or "")
    error = output.get("error") if isinstance(output, dict) else None
    if state == "denied" and approvals:
        reason = denial_reason(str(error.get("message", ""))) if isinstance(error, dict) else None
        approval = Approval(id=approval_id_of(called.tool_call_id), approved=False, reason=reason)
        return ToolDenied(type=called.type, tool_call_id=called.tool_call_id, input=called.input, approval=approval)
    # An approved call that ran (its result replaced the placeholder): the client keeps the approval on the part.
    ran_approved = approvals and kind == "approval" and state in ("answered", "failed")
    approved = Approval(id=approval_id_of(called.tool_call_id), approved=True) if ran_approved else None
    if isinstance(error, dict):
        text = str(error.get("message") or "the tool failed")
        return ToolFailed(
            type=called.type, tool_call_id=called.tool_call_id, input=called.input, error_text=text, approval=approved
        )
    return ToolAnswered(
        type=called.type, tool_call_id=called.tool_call_id, input=called.input, output=output, approval=approved
    )


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
