"""`ResponseChains` in the model client, against the mock over HTTP: calls outside a session's turn stay stateless,
and a chain store that cannot answer (Postgres down) costs the chain, never the call."""

from __future__ import annotations

import asyncio
import contextvars

from backend.chat.llm import Completed, LLMClient, RetryPolicy
from backend.chat.llm_response_state import ResponseChains, conversation_context
from backend.devtools.mock_llm import MockLLMServer
from backend.errors import StorageUnavailable
from backend.store.response_chains import ChainLink


class DownStore:
    """A chain store whose database does not answer."""

    async def get(self, session_id: str) -> ChainLink | None:
        raise StorageUnavailable("down")

    async def put(self, session_id: str, link: ChainLink) -> None:
        raise StorageUnavailable("down")


def client(mock: MockLLMServer) -> LLMClient:
    return LLMClient(
        base_url=mock.base_url,
        api_key="k",
        model="mock-model",
        retry=RetryPolicy(0),
        idle_timeout=2.0,
        api="responses",
        response_chains=ResponseChains(DownStore()),
    )


async def last_event(llm: LLMClient) -> object:
    return [e async for e in llm.stream([{"role": "user", "content": '[[mock:text content="ok"]]'}])][-1]


async def test_a_call_outside_a_turn_is_stateless(mock_llm: MockLLMServer) -> None:
    llm = client(mock_llm)
    try:
        assert isinstance(await last_event(llm), Completed)
    finally:
        await llm.close()
    body = mock_llm.requests[-1]
    assert body["store"] is False and "previous_response_id" not in body


async def test_an_unavailable_chain_store_sends_the_whole_input(mock_llm: MockLLMServer) -> None:
    llm = client(mock_llm)
    context = conversation_context(contextvars.copy_context(), "5f0c6f5e-0000-4000-8000-000000000000")
    try:
        done = await asyncio.create_task(last_event(llm), context=context)  # as a turn's task runs
    finally:
        await llm.close()
    assert isinstance(done, Completed) and done.response_id is not None
    body = mock_llm.requests[-1]
    assert body["store"] is True and "previous_response_id" not in body
