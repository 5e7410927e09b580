"""What a turn works with: its request, the services it uses, its limits, and the state its phases share.

`stream_chat_completion` (`turn.py`) drives a turn step by step; each phase (`phases.py`) reads and updates the
`TurnState` of the turn and the `Step` being taken. A phase ends the turn by raising `TurnFailure` and asks for the
step to be taken again by raising `RetryStep` (control flow as exceptions, like arq's `Retry`): the entry point has
one place for each.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from uuid import UUID

from backend.chat.compaction import Compactor
from backend.chat.context_window import ContextPolicy, ContextWindow
from backend.chat.llm import Completed, LLMClient, ToolCall
from backend.chat.llm_ahead import CallAhead
from backend.chat.operation_runner import OperationRunner, Started
from backend.chat.system_prompt import SystemPrompt
from backend.chat.tokens import TokenCounter
from backend.chat.usage import TurnUsage
from backend.config import ModelPrice
from backend.observability.telemetry import NullTelemetry, TurnFacts, TurnTelemetry
from backend.redis_batch import Group
from backend.store.awaiting import AwaitingCalls
from backend.store.models import AwaitingKind, ChatSession, MessageRow
from backend.store.sessions import SessionStore
from backend.tools.base import Tool, ToolOutcome
from backend.tools.frontend import FrontendTool
from backend.tools.registry import ToolRegistry, TurnTools

INTERRUPTED_MARK = "[interrupted]"


@dataclass(frozen=True, slots=True)
class UserMessage:
    """A message a user sent, as the transports hand it to `TurnAdmission.submit`."""

    text: str
    client_message_id: str | None = None
    """Idempotency key: a resend with the same id finds the same turn."""
    page_context: Mapping[str, Any] | None = None
    frontend_tools: tuple[FrontendTool, ...] | None = None
    """The tools the host app declared with this request (checked); None: it declared none (the session's last
    declaration stands), () : it declared an empty list."""


@dataclass(frozen=True, slots=True)
class Resume:
    """What a turn continues when it starts from answers instead of a user message: the assistant message whose
    calls waited for a person, all of them answered now."""

    message_id: str
    """The UI message id of the asking turn: the continuation streams into the same assistant message."""
    asked_in: int
    """Sequence of the stored assistant message that made the calls."""


@dataclass(frozen=True, slots=True)
class TurnRequest:
    turn_id: str
    """Task id of the turn: the id a client reconnects with."""
    session_id: UUID
    user_id: str
    is_authenticated: bool
    page_context: Mapping[str, Any] | None = None
    """What the panel knows about the page (`url`, `content`); shown to the model for this turn only."""
    note: str | None = None
    """A turn without a new user message (a continuation) tells the model why it is speaking, after the history;
    never stored."""
    session: ChatSession | None = None
    """The session as the caller read it, if it did (saves a read): only its summary fields are used, and a
    summary is a consistent starting point however recent."""
    frontend_tools: tuple[FrontendTool, ...] = ()
    """Tools the browser runs, offered to the model for this turn."""
    resume: Resume | None = None
    """Set on a continuation after answers: the turn first settles the answered calls (runs the approved ones)."""
    history: Sequence[MessageRow] | None = None
    """The session's messages after `session`'s summary, as the request read them when it stored the user message
    (saves the turn a read); None: the turn reads them."""
    no_pending_writes: bool = False
    """The session had no writes waiting for Postgres when the turn claimed it: while it holds the session only
    the turn itself can leave some (see `chat/session_admission.py`), so its steps are stored without asking."""
    end_work: list[Group] = field(default_factory=list)
    """Redis work the turn leaves for its end's round trip, sent before the end (the last step's cache update):
    filled while the turn runs, sent by the driver."""
    ahead: CallAhead | None = None
    """The turn's first model call, sent while its user message was being stored (`turn.send_first_call_ahead`):
    the first step takes it up if it asks for the same request, byte for byte; the driver discards it at the end."""


@dataclass(frozen=True, slots=True)
class TurnLimits:
    max_tool_rounds: int = 10
    """Steps whose tool calls ran; a model still calling tools after this many ends the turn with an error.
    Retries of a step (context overflow, invalid tool arguments) do not count."""
    invalid_tool_json_retries: int = 1
    max_tool_output_tokens: int = 4000
    store_retry_seconds: float = 15.0
    """How long a step is retried while Postgres does not answer before it is kept in Redis for later."""


class SessionToolSource(Protocol):
    """Tools a session brings of its own (the MCP servers its owner added), on top of the process's registry."""

    async def tools_for(self, session_id: UUID, user_id: str) -> Sequence[Tool[Any]]: ...


@dataclass(frozen=True, slots=True)
class TurnServices:
    """What every turn of the process uses, wired once by the runtime."""

    store: SessionStore
    llm: LLMClient
    tools: ToolRegistry
    counter: TokenCounter
    limits: TurnLimits
    policy: ContextPolicy
    compactor: Compactor | None = None
    """Summarises the history when the prompt outgrows the budget; None: the history is only trimmed."""
    operations: OperationRunner | None = None
    """Runs long-running tools in the background; None: they run inline like any tool."""
    session_tools: SessionToolSource | None = None
    """The tools of each session's own MCP servers; None: every turn sees `tools` only."""
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    """USD per million tokens per model (`COPILOT_MODEL_PRICES`): the turn's cost in its `finish` metadata."""
    awaiting: AwaitingCalls | None = None
    """Where calls that wait for a person are kept; None: such calls fail at once (nothing can answer them)."""
    needing_approval: Collection[str] = frozenset()
    """Names of tools whose calls wait for the user's approval (`COPILOT_TOOLS_REQUIRING_APPROVAL`)."""

    async def tools_for(self, request: TurnRequest) -> TurnTools:
        """The tools `request`'s turn sees, for its whole length (the schemas and the calls)."""
        own = (
            ()
            if self.session_tools is None
            else await self.session_tools.tools_for(request.session_id, request.user_id)
        )
        return TurnTools(self.tools, own, frontend=request.frontend_tools, needing_approval=self.needing_approval)


class TurnFailure(Exception):
    """The turn cannot go on: it ends with `error` (what it produced is stored already)."""

    def __init__(self, text: str, code: str) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class RetryStep(Exception):
    """The step is taken again (a new step: its own `start-step` and write keys), without spending a tool round."""


Stage = Literal["prompt", "model", "settle", "tools", "saving", "saved"]


@dataclass(slots=True)
class Step:
    """One model call and what came of it."""

    index: int
    """Counted from 0 over every step started, retries included (like the turn's `start-step` chunks): the
    middle of the step's write keys."""
    stage: Stage = "prompt"
    """Where the step is: what a cancellation keeps depends on it (see `phases.save_interrupted`)."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The prompt of the model call."""
    estimated_tokens: int = 0
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    """What the model streamed as reasoning: stored with the assistant message, never sent back to the model."""
    completed: Completed | None = None
    outcomes: dict[str, ToolOutcome] = field(default_factory=dict)
    """Results of the step's tool calls that finished (call id → outcome)."""
    launched: dict[str, Started] = field(default_factory=dict)
    """Long-running operations the step's calls started (call id → start); their work runs once it is stored."""
    awaiting: dict[str, AwaitingKind] = field(default_factory=dict)
    """Calls that wait for a person (call id → what for): stored as waiting; the turn ends after the step."""
    kept: bool = False
    """Postgres did not take the step: it waits in Redis to be stored."""
    freed_session: bool = False
    """The step's append, the turn's last, freed the session's active turn as well (see `TurnEnded`)."""

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def reasoning_text(self) -> str | None:
        return "".join(self.reasoning) if self.reasoning else None

    @property
    def calls(self) -> Sequence[ToolCall]:
        return self.completed.tool_calls if self.completed is not None else ()

    @property
    def is_reply(self) -> bool:
        """The model answered without calling tools: the turn ends with this step."""
        return self.completed is not None and not self.completed.tool_calls

    @property
    def is_last(self) -> bool:
        """The turn ends with this step: the model answered, or calls of it wait for a person."""
        return self.is_reply or bool(self.awaiting)


@dataclass(slots=True)
class TurnState:
    """One turn in progress: what its phases share across steps."""

    request: TurnRequest
    prompt: SystemPrompt
    services: TurnServices
    telemetry: TurnTelemetry
    window: ContextWindow
    page_context: list[dict[str, Any]]
    """Per-turn context messages (the page the user is on), after the history; never stored."""
    tools: TurnTools
    """The tools of this turn: their schemas go to the model, its calls run them."""
    fixed_tokens: int
    """System prompt, tool schemas and page context: counted once per turn, not per call."""
    steps: int = 0
    tool_rounds: int = 0
    json_retries: int = 0
    squeeze: float = 1.0
    """Share of the budget the prompt may use: halved once when the provider says the prompt is too long."""
    usage: TurnUsage = field(default_factory=TurnUsage)
    """What the turn's model calls used so far (the `finish` chunk's metadata)."""
    no_pending_writes: bool = False
    """`request.no_pending_writes`, until one of the turn's steps is kept for later."""

    @classmethod
    async def open(
        cls, request: TurnRequest, prompt: SystemPrompt, services: TurnServices, telemetry: TurnTelemetry | None
    ) -> TurnState:
        """Load the turn's context: the session's summary and the messages after it."""
        session = request.session or await services.store.get_any(request.session_id)
        assert session is not None
        window = await ContextWindow.load(services.store, session, rows=request.history)
        page_context = page_context_messages(request.page_context)
        tools = await services.tools_for(request)
        tool_schemas = tools.schemas()
        count = services.counter
        fixed = count.count_cached(prompt.text) + count.count_tools(tool_schemas) + count.count_messages(page_context)
        return cls(
            request=request,
            prompt=prompt,
            services=services,
            telemetry=telemetry or NullTelemetry().turn_started(NO_FACTS),
            window=window,
            page_context=page_context,
            tools=tools,
            fixed_tokens=fixed,
            no_pending_writes=request.no_pending_writes,
        )

    def next_step(self) -> Step:
        step = Step(self.steps)
        self.steps += 1
        return step


def step_key(turn_id: str, step: int, index: int) -> str:
    """The write key of the `index`-th message step `step` (counted from 0, like the turn's `start-step` chunks)
    stores: whoever stores that message (the turn, the reconciler, the pod closing a dead owner's turn) uses it."""
    return f"{turn_id}:{step}:{index}"


def page_context_messages(page: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not page:
        return []
    # Page content comes from the browser: it is context for the model, never part of the system prompt.
    url = page.get("url") or ""
    content = page.get("content") or ""
    return [{"role": "user", "content": f'<page_context url="{url}">\n{content}\n</page_context>'}]


NO_FACTS = TurnFacts("", UUID(int=0), "", "", "", "", 0)
