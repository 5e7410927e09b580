"""Bodies of the turn endpoints: a plain `{message}` body and the body `useChat`'s default transport posts.

Every string here is NUL-free and every id bounded (`backend.api.inputs`); useChat's `messages` are parsed into
small models, bounded in count and parts, before anything reads them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from backend.api.inputs import ClientId, OptionalId, Text, no_nul
from backend.api.schemas import MessagePublic
from backend.chat.messages import ui_text_of
from backend.chat.turn_state import UserMessage


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


class SendMessage(BaseModel):
    """Either `{message, client_message_id?, context?}` or useChat's `{id, messages, trigger}`."""

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

    @model_validator(mode="after")
    def _one_form(self) -> SendMessage:
        if self.message is None and not self.messages:
            raise ValueError("send either 'message' or useChat's 'messages'")
        if self.trigger == "regenerate-message":
            raise ValueError("regenerate-message is not supported; send the message again instead")
        return self

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
