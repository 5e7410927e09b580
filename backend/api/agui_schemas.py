"""The body of `POST /api/agui`: AG-UI 1.0's `RunAgentInput`, bounded like every other body (`backend.api.inputs`).

Fields AG-UI clients add later pass through (`extra="allow"`), as the protocol asks of its peers. Only what the
service reads is typed tightly: ids, the messages' roles and text, the context. `tools` (frontend tools) and
`resume` (answers to interrupts) are accepted and not used yet: human in the loop is not mapped to AG-UI yet.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from backend.api.inputs import ClientId, OptionalId, Text

MAX_MESSAGES = 10_000
MAX_PARTS = 1_000
MAX_CONTEXT_ITEMS = 100
MAX_CONTEXT_CHARS = 50_000
"""What the model is shown of the context at most (the page context's bound)."""


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class ContentPart(_Body):
    """A part of a message's content. Only `text` parts are read; media parts pass through unread."""

    type: str = Field(max_length=200)
    text: Text | None = None


class FunctionCall(_Body):
    name: Text = Field(max_length=200)
    arguments: Text


class ToolCall(_Body):
    id: OptionalId
    type: Literal["function"] = "function"
    function: FunctionCall


class AguiMessage(_Body):
    """One message of the history, any role. `content` is text, content parts, or (an activity) an object."""

    id: ClientId
    role: Literal["developer", "system", "assistant", "user", "tool", "activity", "reasoning"]
    content: Text | list[ContentPart] | dict[str, Any] | None = Field(default=None)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_PARTS)
    tool_call_id: OptionalId | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return ""


class ContextItem(_Body):
    description: Text = Field(max_length=10_000)
    value: Text = Field(max_length=MAX_CONTEXT_CHARS)


class RunAgentInput(_Body):
    """AG-UI's `RunAgentInput`."""

    thread_id: ClientId
    """The conversation: a session of the caller (its id, or any id the client keeps for it), created when new."""
    run_id: ClientId
    """The client's name for this run; `GET /api/agui/runs/{runId}/events` replays it."""
    parent_run_id: OptionalId | None = None
    protocol_version: str | None = Field(default=None, max_length=50)
    messages: list[AguiMessage] = Field(max_length=MAX_MESSAGES)
    """The whole history as the client has it, ending with the new user message."""
    context: list[ContextItem] | None = Field(default=None, max_length=MAX_CONTEXT_ITEMS)
    """Shown to the model for this run as context the client supplied (like a page's content)."""
    state: Any = None
    """Accepted, not used: the service keeps no shared state."""
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_PARTS)
    """Frontend tools: accepted, not offered to the model yet (human in the loop over AG-UI is coming)."""
    resume: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_PARTS)
    """Answers to interrupts: accepted, not used yet (human in the loop over AG-UI is coming)."""
    forwarded_props: Any = None
    """Accepted, not used."""

    def page_context(self) -> dict[str, str] | None:
        """The context items as the turn's page context (what the model is shown of the client's side)."""
        if not self.context:
            return None
        text = "\n\n".join(f"{item.description}:\n{item.value}" for item in self.context)
        return {"content": text[:MAX_CONTEXT_CHARS]}
