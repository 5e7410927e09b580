"""A turn's services in the test's process: the real session store (Postgres and Redis) and the model client talking
to the mock model over HTTP. No app, no uvicorn: the turn engine and its phases are called directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from backend.chat.compaction import Compactor
from backend.chat.context_budget import ContextBudget
from backend.chat.context_window import Calibration, ContextPolicy
from backend.chat.llm import LLMClient, RetryPolicy
from backend.chat.system_prompt import SystemPrompt
from backend.chat.tokens import TokenCounter
from backend.chat.turn_state import TurnLimits, TurnRequest, TurnServices, TurnState
from backend.devtools.mock_llm import MockLLMServer
from backend.observability.telemetry import Generation
from backend.store.cache import SessionCache
from backend.store.models import ChatSession, NewMessage
from backend.store.pending import PendingWrites
from backend.store.postgres import ChatRepository
from backend.store.sessions import SessionStore
from backend.tools.builtin import builtin_tools
from backend.tools.registry import ToolRegistry
from tests.chat.long_tools import Pause

PROMPT = SystemPrompt(name="test", version="1", text="You are a test assistant.")


@pytest.fixture
async def store(pool: asyncpg.Pool, redis: Redis) -> AsyncIterator[SessionStore]:
    sessions = SessionStore(ChatRepository(pool), SessionCache(redis, ttl_seconds=60), PendingWrites(redis))
    yield sessions
    await sessions.close()


@pytest.fixture
async def model(mock_llm: MockLLMServer) -> AsyncIterator[LLMClient]:
    """The model client on the mock, without retries (a test that wants them says so)."""
    client = LLMClient(
        base_url=mock_llm.base_url, api_key="test", model="mock-model", retry=RetryPolicy(0), idle_timeout=2.0
    )
    yield client
    await client.close()


class Recorder:
    """Turn telemetry that keeps what it heard."""

    def __init__(self) -> None:
        self.generations: list[Generation] = []
        self.tools: list[dict[str, Any]] = []

    def generation(self, call: Generation) -> None:
        self.generations.append(call)

    def tool(self, **facts: Any) -> None:
        self.tools.append(facts)

    def ended(self, *, status: str, error_class: str | None) -> None:
        pass


@dataclass
class Kit:
    """What a test builds turns from."""

    store: SessionStore
    model: LLMClient
    redis: Redis
    counter: TokenCounter = field(default_factory=lambda: TokenCounter("gpt-4o-mini"))
    telemetry: Recorder = field(default_factory=Recorder)

    def services(self, *, window: int = 128_000, compactor: bool = False, **limits: Any) -> TurnServices:
        budget = ContextBudget(window=window, reserved_output=min(1000, window // 4))
        return TurnServices(
            store=self.store,
            llm=self.model,
            tools=ToolRegistry([*builtin_tools(), Pause()]),
            counter=self.counter,
            limits=TurnLimits(**{"store_retry_seconds": 0.0, **limits}),
            policy=ContextPolicy(budget, Calibration()),
            compactor=self.compactor() if compactor else None,
        )

    def compactor(self) -> Compactor:
        return Compactor(
            llm=self.model,
            store=self.store,
            redis=self.redis,
            counter=self.counter,
            model="mock-model",
            max_input_tokens=100_000,
            max_summary_tokens=500,
            timeout_seconds=10,
        )

    async def session(self, *history: tuple[str, str]) -> ChatSession:
        """A session of alice's with these (role, text) messages stored."""
        session = await self.store.create("alice", title="t")
        if history:
            rows = [NewMessage(role, text, token_count=self.counter.count_text(text) + 4) for role, text in history]
            await self.store.append(session.id, rows)
        return session

    def request(self, session: ChatSession, **fields: Any) -> TurnRequest:
        return TurnRequest(
            turn_id=str(uuid.uuid4()), session_id=session.id, user_id="alice", is_authenticated=True, **fields
        )

    async def turn(self, session: ChatSession, services: TurnServices | None = None, **fields: Any) -> TurnState:
        """A turn opened on `session` (its context loaded), as `stream_chat_completion` opens it."""
        return await TurnState.open(
            self.request(session, **fields), PROMPT, services or self.services(), self.telemetry
        )


@pytest.fixture
async def kit(store: SessionStore, model: LLMClient, redis: Redis) -> Kit:
    return Kit(store, model, redis)


StoredRows = Callable[[uuid.UUID], Any]


@pytest.fixture
def stored_rows(db: asyncpg.Connection) -> StoredRows:
    """The session's stored messages as (role, content, write key, tool call ids) rows, in order."""

    async def rows(session_id: uuid.UUID) -> list[tuple[str, str | None, str | None, list[str]]]:
        found = await db.fetch(
            "SELECT role, content, write_key, tool_calls FROM chat_messages WHERE session_id = $1 ORDER BY sequence",
            session_id,
        )
        return [(r["role"], r["content"], r["write_key"], [c["id"] for c in r["tool_calls"] or []]) for r in found]

    return rows
