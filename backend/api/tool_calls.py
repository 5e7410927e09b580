"""Answers to tool calls that wait for a person, for any client: a frontend tool's output (or the answer to
`ask_user`) and an approval. useChat answers through the stream route instead (its next request carries them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from backend.api.chat_schemas import AnswerResult, ApprovalBody, FrontendToolDeclaration, ToolOutputBody
from backend.api.deps import CurrentUser, HumanInputDep, Limits, OwnedSession, SettingsDep
from backend.api.schemas import AwaitingPublic
from backend.api.submission import answerer_of
from backend.chat.human_input import Answer, Approval, ToolOutput

router = APIRouter(prefix="/api/chat/sessions/{session_id}/tool-calls", tags=["chat"])

CallId = Annotated[str, Path(min_length=1, max_length=200)]


@router.post("/{tool_call_id}/output")
async def send_tool_output(
    tool_call_id: CallId,
    body: ToolOutputBody,
    session: OwnedSession,
    user: CurrentUser,
    human_input: HumanInputDep,
    limits: Limits,
    settings: SettingsDep,
) -> AnswerResult:
    """The result of a frontend tool the browser ran, or the user's answer to `ask_user`: `{output}` or `{error}`.
    Once no call of its message waits any more, the conversation continues (`task_id`). 404 for a call that does
    not wait for an output in this session, 409 for one a newer message closed, 410 for one that expired; a resend
    changes nothing and returns the same task."""
    answer = ToolOutput(tool_call_id, body.output, body.error)
    return await _answer(answer, body.tools, session, user, human_input, limits, settings)


@router.post("/{tool_call_id}/approval")
async def send_approval(
    tool_call_id: CallId,
    body: ApprovalBody,
    session: OwnedSession,
    user: CurrentUser,
    human_input: HumanInputDep,
    limits: Limits,
    settings: SettingsDep,
) -> AnswerResult:
    """Approve or deny a call that waits for approval: approved, the tool runs and the conversation continues;
    denied, the model is told (with `reason`). Errors as for the output."""
    answer = Approval(tool_call_id, body.approved, body.reason)
    return await _answer(answer, None, session, user, human_input, limits, settings)


async def _answer(
    answer: Answer,
    declared: list[FrontendToolDeclaration] | None,
    session: OwnedSession,
    user: CurrentUser,
    human_input: HumanInputDep,
    limits: Limits,
    settings: SettingsDep,
) -> AnswerResult:
    declarations = None if declared is None else [t.declaration() for t in declared]
    answerer = answerer_of(user, settings, limits)
    answered = await human_input.answer_call(session, answerer, answer, declared=declarations)
    return AnswerResult(task_id=answered.task_id, awaiting=[AwaitingPublic.of(c) for c in answered.waiting])
