"""Bodies of the turn endpoints: a plain `{message}` body and the body `useChat`'s default transport posts.

Every string here is NUL-free and every id bounded (`backend.api.inputs`); useChat's `messages` are parsed into
small models, bounded in count and parts, before anything reads them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from backend.api.inputs import ClientId, OptionalId, Text, ToolOutputValue, check_tool_output, no_nul
from backend.api.schemas import AwaitingPublic, MessagePublic
from backend.chat.human_input import Answer, Approval, ToolOutput
from backend.chat.messages import ui_text_of
from backend.chat.turn_state import UserMessage
from backend.tools import frontend


class PageContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(max_length=2048), AfterValidator(no_nul)] | None = None
    content: Annotated[str, StringConstraints(max_length=50_000), AfterValidator(no_nul)] | None = None
    """What the panel can see of the page the user is on; shown to the model for this turn."""


MAX_UI_MESSAGES = 10_000
MAX_UI_PARTS = 1_000


class UIPart(BaseModel):
    """A part of a useChat `UIMessage`. Only `text` parts are read; other kinds pass through unread."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=200)
    text: Text | None = None


class UIMessage(BaseModel):
    """A useChat `UIMessage` (AI SDK 5+: `parts`; the older `content` string is read when it has no text part)."""

    model_config = ConfigDict(extra="allow")

    id: OptionalId | None = None
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart] | None = Field(default=None, max_length=MAX_UI_PARTS)
    content: Text | None = None


class FrontendToolDeclaration(BaseModel):
    """A tool the host app runs in the browser, as the AI SDK declares tools: `{name, description, inputSchema}`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(max_length=64)
    description: Text = Field(default="", max_length=frontend.MAX_DESCRIPTION_CHARS)
    input_schema: Annotated[dict[str, Any], AfterValidator(check_tool_output)] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}, alias="inputSchema"
    )
    """A JSON Schema of an object (at most 16 KB); the model's arguments follow it."""

    def declaration(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


class _ApprovalPart(BaseModel):
    id: str = Field(default="", max_length=200)
    approved: bool
    reason: Text | None = Field(default=None, max_length=2000)


class _AnsweringPart(BaseModel):
    """The fields of a tool part that answer a call that waited: useChat's `addToolOutput` (`output-available`,
    `output-error`) and `addToolApprovalResponse` (`approval-responded`)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    tool_call_id: str = Field(alias="toolCallId", min_length=1, max_length=200)
    state: str
    output: ToolOutputValue = None
    error_text: Text | None = Field(default=None, alias="errorText", max_length=10_000)
    approval: _ApprovalPart | None = None


_ANSWERING_STATES = frozenset({"output-available", "output-error", "approval-responded"})


class SendMessage(BaseModel):
    """Either `{message, client_message_id?, context?, tools?}` or useChat's `{id, messages, trigger, tools?}`.
    useChat's last message is the user's message, or (after `addToolOutput` / `addToolApprovalResponse`) the
    assistant message whose tool parts answer calls that wait."""

    model_config = ConfigDict(extra="allow")

    message: Annotated[str, StringConstraints(min_length=1), AfterValidator(no_nul)] | None = None
    client_message_id: ClientId | None = None
    """Idempotency key: a resend with the same id joins the same turn instead of starting another."""
    context: PageContext | None = None

    id: OptionalId | None = None
    """useChat: the chat id (the session id)."""
    messages: list[UIMessage] | None = Field(default=None, max_length=MAX_UI_MESSAGES)
    """useChat: the UIMessages of the chat; only the last user message is used, history comes from storage."""
    trigger: Literal["submit-message", "regenerate-message"] | None = None
    tools: list[FrontendToolDeclaration] | None = Field(default=None, max_length=frontend.MAX_TOOLS)
    """Frontend tools the model may call for this turn (and the session's continuations); absent: the session's
    last declaration stands."""

    @model_validator(mode="after")
    def _one_form(self) -> SendMessage:
        if self.message is None and not self.messages:
            raise ValueError("send either 'message' or useChat's 'messages'")
        if self.trigger == "regenerate-message":
            raise ValueError("regenerate-message is not supported; send the message again instead")
        return self

    @property
    def answers_calls(self) -> bool:
        """useChat sent the assistant message back: its tool parts answer calls (frontend tools, approvals)."""
        messages = self.messages
        return self.message is None and bool(messages) and messages is not None and messages[-1].role == "assistant"

    def declared_tools(self) -> list[dict[str, Any]] | None:
        return None if self.tools is None else [t.declaration() for t in self.tools]

    def answers(self) -> list[Answer]:
        """What the last (assistant) message's tool parts answer; `ValueError` for a malformed part."""
        assert self.messages
        answers: list[Answer] = []
        for part in self.messages[-1].parts or ():
            extra = part.model_extra or {}
            if not (part.type.startswith("tool-") or part.type == "dynamic-tool"):
                continue
            if extra.get("state") not in _ANSWERING_STATES:
                continue
            try:
                answering = _AnsweringPart.model_validate(extra)
            except ValidationError as e:
                raise ValueError(f"a tool part of the last message is malformed: {e.errors()[0]['msg']}") from None
            call_id = answering.tool_call_id
            if answering.state == "approval-responded":
                if answering.approval is None:
                    raise ValueError("an approval-responded tool part has no approval")
                answers.append(Approval(call_id, answering.approval.approved, answering.approval.reason))
            elif answering.state == "output-error":
                answers.append(ToolOutput(call_id, None, answering.error_text or "the tool failed"))
            else:
                answers.append(ToolOutput(call_id, answering.output))
        return answers

    def to_user_message(self, max_chars: int) -> UserMessage:
        if self.message is not None:
            text, client_id = self.message, self.client_message_id
        else:
            assert self.messages
            last = self.messages[-1]
            if last.role != "user":
                raise ValueError("the last message of 'messages' must be a user message")
            text = ui_text_of(last.model_dump(exclude_none=True))
            client_id = self.client_message_id or last.id or None
        if not text.strip():
            raise ValueError("the message is empty")
        if len(text) > max_chars:
            raise ValueError(f"the message is longer than {max_chars} characters")
        context = self.context.model_dump(exclude_none=True) if self.context else None
        return UserMessage(text=text, client_message_id=client_id, page_context=context)


class TurnResult(BaseModel):
    task_id: str
    status: str
    messages: list[MessagePublic]
    """What the turn stored: assistant messages and tool results, in order."""


class ModelUsagePublic(BaseModel):
    model: str | None
    """The model; null for assistant messages stored without one."""
    messages: int
    """Assistant messages with usage written by this model."""
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    """Prompt tokens served from the provider's cache (part of `prompt_tokens`)."""
    reasoning_tokens: int
    """Completion tokens spent on reasoning (part of `completion_tokens`)."""
    cost_usd: float | None
    """At the model's price in `COPILOT_MODEL_PRICES`; null when it has none."""


class Usage(BaseModel):
    prompt_tokens: int
    """Session total: every stored step the provider reported usage for."""
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    """Summed over the assistant messages that carry usage (see `by_model`)."""
    reasoning_tokens: int
    cost_usd: float | None
    """Sum of the priced models' costs; null when no model in `by_model` has a price."""
    by_model: list[ModelUsagePublic]
    """The usage stored with the session's assistant messages, per model."""


class CancelResult(BaseModel):
    task_id: str | None
    """The turn that was stopped; null when the session had no running turn."""
    status: str
    """`cancelled` (or another final status if it ended first), or `idle`."""


class ToolOutputBody(BaseModel):
    """The result of a frontend tool, or the answer to `ask_user`: `output`, or `error` when it failed."""

    model_config = ConfigDict(extra="forbid")

    output: ToolOutputValue = None
    error: Text | None = Field(default=None, max_length=10_000)
    """Set when the tool failed in the browser: the model reads it as the call's error."""
    tools: list[FrontendToolDeclaration] | None = Field(default=None, max_length=frontend.MAX_TOOLS)
    """Frontend tools for the continuation (absent: the session's last declaration)."""

    @model_validator(mode="after")
    def _one_of(self) -> ToolOutputBody:
        if self.error is not None and self.output is not None:
            raise ValueError("send either 'output' or 'error'")
        return self


class ApprovalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approved: bool
    reason: Text | None = Field(default=None, max_length=2000)
    """Why (shown to the model when denied)."""


class AnswerResult(BaseModel):
    task_id: str | None
    """The continuation of the conversation, now that nothing of the message waits: follow it with
    `GET /api/chat/tasks/{task_id}/stream`. Null while other calls of the message still wait."""
    awaiting: list[AwaitingPublic]
    """The calls of the message that still wait."""
