"""The model path through a real LiteLLM proxy (the version `scripts/bench.sh` pins, from `.bench/litellm-venv`)
in front of the mock model, over both APIs: replies, parallel tool calls and usage pass through, and its error
shapes are classified as the provider's own would be. Skipped, with the reason, when LiteLLM is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from backend.chat.llm import Completed, LLMClient, ModelApi, RetryPolicy, TextChunk
from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from backend.errors import ModelError
from bench.litellm_peer import MASTER_KEY, litellm_proxy, unavailable_reason
from tests.api.test_chat_stream import assert_well_formed, new_session, send
from tests.conftest import LiveServer
from tests.helpers import free_port
from tests.sse import chunks, text_of

ROOT = Path(__file__).resolve().parents[1]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculate",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        },
    }
]

pytestmark = pytest.mark.slow


async def failure(llm: LLMClient, message: str) -> ModelError:
    with pytest.raises(ModelError) as caught:
        async for _ in llm.stream([{"role": "user", "content": message}]):
            pass
    return caught.value


async def reply(llm: LLMClient, message: str) -> tuple[str, Completed]:
    events: list[Any] = [e async for e in llm.stream([{"role": "user", "content": message}], TOOLS)]
    assert isinstance(events[-1], Completed)
    return "".join(e.text for e in events if isinstance(e, TextChunk)), events[-1]


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_the_model_path_through_litellm_proxy(api: ModelApi, settings: Settings) -> None:
    if (reason := unavailable_reason(ROOT)) is not None:
        pytest.skip(reason)
    async with MockLLMServer() as mock:
        port = free_port()
        async with litellm_proxy(ROOT, mock.base_url, port):
            gateway = f"http://127.0.0.1:{port}/v1"
            # LiteLLM retries some refusals itself (a 403 three times) before it answers: a generous idle timeout.
            llm = LLMClient(
                base_url=gateway,
                api_key=MASTER_KEY,
                model="mock-model",
                retry=RetryPolicy(0),
                idle_timeout=30,
                api=api,
            )
            try:
                await _model_calls(llm)
            finally:
                await llm.close()
            await _a_turn(settings, gateway, api)


async def _model_calls(llm: LLMClient) -> None:
    text, done = await reply(llm, '[[mock:reasoning content="hmm"]] [[mock:usage cached=5]] [[mock:text content="hi"]]')
    assert text == "hi" and done.usage is not None
    assert (done.usage.completion_tokens, done.usage.reasoning_tokens, done.usage.cached_tokens) == (2, 1, 5)
    _, done = await reply(
        llm,
        '[[mock:tool name=calculate args={"expression": "1"}]] [[mock:tool name=calculate args={"expression": "2"}]]',
    )
    assert [c.arguments for c in done.tool_calls] == [{"expression": "1"}, {"expression": "2"}]

    overflow = await failure(llm, "[[mock:context_length]]")  # LiteLLM: code "400", litellm.ContextWindowExceededError
    assert overflow.provider_code == "context_length_exceeded" and not overflow.retryable
    region = await failure(llm, "[[mock:region_block]]")
    assert region.provider_code == "unsupported_country_region_territory" and not region.retryable
    limited = await failure(llm, "[[mock:rate_limit retry_after=0]]")
    assert limited.provider_code == "rate_limit_exceeded" and limited.retryable
    broken = await failure(llm, "[[mock:server_error]]")
    assert broken.retryable
    # An error inside the stream: LiteLLM passes the Responses `error` event on, and turns a chat completion's into
    # its own `MidStreamFallbackError`; both are retried before the first chunk.
    stalled = await failure(llm, "[[mock:stream_error after=1 code=408]]")
    assert stalled.retryable


async def _a_turn(settings: Settings, gateway: str, api: ModelApi) -> None:
    through = settings.model_copy(
        update={
            "llm_base_url": gateway,
            "llm_api_key": SecretStr(MASTER_KEY),
            "model": "mock-model",
            "llm_api": api,
            "llm_retry_base_seconds": 0.01,
            "llm_idle_timeout_seconds": 30.0,
        }
    )
    async with LiveServer(through) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, '[[mock:tool name=calculate args={"expression": "6*7"}]]')
        assert_well_formed(body)
        assert "42" in text_of(body) and chunks(body)[-1]["messageMetadata"]["usage"]["completionTokens"] > 0
        sid = await new_session(client)
        _, body = await send(client, sid, '[[mock:context_length times=1 key=g]] [[mock:text content="fits"]]')
        assert text_of(body) == "fits"  # LiteLLM's overflow shape compacted and retried, as OpenAI's is
