"""The body of `POST /api/agui`: AG-UI 1.0's `RunAgentInput`, bounded like every other body (`backend.api.inputs`).

Fields AG-UI clients add later pass through (`extra="allow"`), as the protocol asks of its peers. Only what the
service reads is typed tightly: ids, the messages' roles and text, the context, the frontend tools, the answers to
interrupts.
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
    error: Text | None = None
    """A tool message's failure (the frontend tool failed): the model is shown it as the call's error."""

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return ""


class ContextItem(_Body):
    description: Text = Field(max_length=10_000)
    value: Text = Field(max_length=MAX_CONTEXT_CHARS)


class AguiTool(_Body):
    """A frontend tool (AG-UI `Tool`); its bounds and schema are checked as every frontend tool's are
    (`backend/tools/frontend.py`)."""

    name: Text = Field(max_length=200)
    description: Text = Field(default="", max_length=10_000)
    parameters: dict[str, Any] | None = None
    """The arguments' JSON Schema (an object); none: the tool takes no arguments."""

    def declaration(self) -> dict[str, Any]:
        """As the AI SDK declares a frontend tool (what `HumanInput.check_frontend_tools` reads)."""
        schema = self.parameters or {"type": "object", "properties": {}}
        return {"name": self.name, "description": self.description, "inputSchema": schema}


class ResumeEntry(_Body):
    """An answer to an interrupt (AG-UI `ResumeEntry`). For an approval (`reason: tool_approval`), `payload` is
    `{"approved": bool, "reason"?: str}`; `status: cancelled` denies the call."""

    interrupt_id: ClientId
    status: Literal["resolved", "cancelled"]
    payload: Any = None


class RunAgentInput(_Body):
    """AG-UI's `RunAgentInput`."""

    thread_id: ClientId
    """The conversation: a session of the caller (its id, or any id the client keeps for it), created when new."""
    run_id: ClientId
    """The client's name for this run; `GET /api/agui/runs/{runId}/events` replays it."""
    parent_run_id: OptionalId | None = None
    protocol_version: str | None = Field(default=None, max_length=50)
    messages: list[AguiMessage] = Field(max_length=MAX_MESSAGES)
    """The whole history as the client has it, ending with the new user message, or with the tool messages that
    answer calls that wait (frontend tools, questions)."""
    context: list[ContextItem] | None = Field(default=None, max_length=MAX_CONTEXT_ITEMS)
    """Shown to the model for this run as context the client supplied (like a page's content)."""
    state: Any = None
    """Accepted, not used: the service keeps no shared state."""
    tools: list[AguiTool] | None = Field(default=None, max_length=MAX_PARTS)
    """Frontend tools: offered to the model for this run and remembered for the thread's continuations; a call of
    one ends the run with the call pending, answered by a tool message in the next run."""
    resume: list[ResumeEntry] | None = Field(default=None, max_length=MAX_PARTS)
    """Answers to the interrupts (approvals) that ended an earlier run."""
    forwarded_props: Any = None
    """Accepted, not used."""

    def page_context(self) -> dict[str, str] | None:
        """The context items as the turn's page context (what the model is shown of the client's side)."""
        if not self.context:
            return None
        text = "\n\n".join(f"{item.description}:\n{item.value}" for item in self.context)
        return {"content": text[:MAX_CONTEXT_CHARS]}
