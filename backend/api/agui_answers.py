"""A run's answers to the calls an earlier run left waiting for a person, read from AG-UI's `RunAgentInput`.

AG-UI answers a frontend tool call (or a question) the way a tool answers: the next run's `messages` end with a
tool message (`role: "tool"`, `toolCallId`, `content`, `error` when it failed). An approval is an interrupt of the
run that asked for it (`backend/chat/agui_stream.py`); the next run answers it with a `resume` entry whose
`interruptId` is the interrupt's id and whose `payload` is `{"approved": bool, "reason"?: str}` (`status:
cancelled` denies). Both become `HumanInput` answers, so every transport answers a call the same way, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend.api.agui_schemas import AguiMessage, ResumeEntry
from backend.chat.human_input import Answer, Approval, ToolOutput
from backend.chat.ui_stream import approval_id_of

_APPROVAL_PREFIX = approval_id_of("")
MAX_REASON_CHARS = 2_000
"""A denial's reason is read by the model: `payload` is free JSON, so it is bounded here."""


def trailing_tool_messages(messages: Sequence[AguiMessage]) -> list[AguiMessage]:
    """The tool messages that end the history (after the last assistant or user message): the run's results."""
    i = len(messages)
    while i > 0 and messages[i - 1].role == "tool":
        i -= 1
    return list(messages[i:])


def answers_of(tool_messages: Sequence[AguiMessage], resume: Sequence[ResumeEntry]) -> list[Answer]:
    """The answers the tool messages and resume entries carry; `ValueError` naming one that is not an answer.
    Results of calls that wait for nobody (a server tool's result echoed back) are sorted out by `HumanInput`."""
    answers: list[Answer] = []
    for message in tool_messages:
        if not message.tool_call_id:
            raise ValueError(f"tool message {message.id!r} has no toolCallId")
        if message.error is not None:
            answers.append(ToolOutput(message.tool_call_id, error_text=message.error or "the tool failed"))
        else:
            answers.append(ToolOutput(message.tool_call_id, output=message.text()))
    answers.extend(_approval(entry) for entry in resume)
    return answers


def _approval(entry: ResumeEntry) -> Approval:
    call_id = entry.interrupt_id.removeprefix(_APPROVAL_PREFIX)
    if not entry.interrupt_id.startswith(_APPROVAL_PREFIX) or not call_id:
        raise ValueError(f"interrupt {entry.interrupt_id!r} is not one this service raised")
    payload: Any = entry.payload if isinstance(entry.payload, dict) else {}
    reason = payload.get("reason")
    reason = reason if isinstance(reason, str) and reason.strip() else None
    if reason is not None and ("\x00" in reason or len(reason) > MAX_REASON_CHARS):
        raise ValueError(f"resume of {entry.interrupt_id!r}: a reason is text of at most {MAX_REASON_CHARS} characters")
    if entry.status == "cancelled":
        return Approval(call_id, approved=False, reason=reason)
    approved = payload.get("approved")
    if not isinstance(approved, bool):
        raise ValueError(f"resume of {entry.interrupt_id!r}: payload must be {{'approved': true or false}}")
    return Approval(call_id, approved=approved, reason=reason)
