"""`LLMClient` over the Responses API (`api="responses"`), against the mock model over real HTTP: the same model
events, usage and error rules as over Chat Completions, and the history sent as Responses input items."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai
import pytest

from backend.chat.llm import (
    Completed,
    LLMClient,
    ModelEvent,
    ReasoningChunk,
    RetryPolicy,
    TextChunk,
    ToolArgumentsDelta,
    ToolCallHeader,
)
from backend.chat.llm_responses import function_tools, input_items
from backend.devtools.mock_llm import MockLLMServer
from backend.errors import ModelError
from tests.chat.test_llm import TOOLS, RawModel

HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 6*7 and the time?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "calculate", "arguments": '{"e": "6*7"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_current_time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": "42"},
    {"role": "tool", "tool_call_id": "call_b", "content": '{"time": "12:00"}'},
    {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
]


def client(base_url: str, *, retries: int = 2, idle: float = 1.0) -> LLMClient:
    return LLMClient(
        base_url=base_url,
        api_key="test-key",
        model="mock-model",
        retry=RetryPolicy(retries, 0.01, 0.05),
        idle_timeout=idle,
        api="responses",
    )


async def collect(
    llm: LLMClient, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
) -> list[ModelEvent]:
    return [event async for event in llm.stream(messages, tools)]


def text(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextChunk))


def user(content: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


@pytest.fixture
async def llm(mock_llm: MockLLMServer) -> AsyncIterator[LLMClient]:
    model = client(mock_llm.base_url)
    yield model
    await model.close()


def test_chat_history_becomes_responses_input_items() -> None:
    assert input_items(HISTORY) == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What is 6*7 and the time?"},
        {"role": "assistant", "content": "Let me check."},
        {"type": "function_call", "call_id": "call_a", "name": "calculate", "arguments": '{"e": "6*7"}'},
        {"type": "function_call", "call_id": "call_b", "name": "get_current_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "42"},
        {"type": "function_call_output", "call_id": "call_b", "output": '{"time": "12:00"}'},
        {"role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
    ]


def test_an_assistant_message_of_only_tool_calls_has_no_message_item() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
    items = input_items([{"role": "assistant", "content": None, "tool_calls": [call]}])
    assert items == [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]


def test_tool_schemas_are_flattened_and_not_strict_unless_they_say() -> None:
    strict = {"type": "function", "function": {"name": "s", "parameters": {"type": "object"}, "strict": True}}
    assert function_tools([*TOOLS, strict]) == [
        {
            "type": "function",
            "name": "calculate",
            "description": "Evaluate an arithmetic expression",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
            "strict": False,
        },
        {"type": "function", "name": "s", "parameters": {"type": "object"}, "strict": True},
    ]


async def test_text_streams_and_ends_with_usage(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    events = await collect(llm, user('[[mock:text content="Hello there, friend"]]'))
    assert text(events) == "Hello there, friend"
    done = events[-1]
    assert isinstance(done, Completed) and done.finish_reason == "stop" and done.tool_calls == []
    assert done.usage is not None and done.usage.completion_tokens == 3 and done.usage.prompt_tokens > 0
    body = mock_llm.requests[-1]
    assert body["stream"] is True and body["store"] is False and "messages" not in body
    assert body["input"] == user('[[mock:text content="Hello there, friend"]]')
    assert "tools" not in body and "reasoning" not in body


async def test_the_request_carries_input_items_and_flat_tools(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    await collect(llm, HISTORY, TOOLS)
    body = mock_llm.requests[-1]
    assert body["input"] == input_items(HISTORY)
    assert body["tools"] == function_tools(TOOLS)


async def test_reasoning_summaries_and_their_usage(mock_llm: MockLLMServer) -> None:
    llm = LLMClient(
        base_url=mock_llm.base_url,
        api_key="k",
        model="mock-model",
        retry=RetryPolicy(0),
        idle_timeout=1.0,
        api="responses",
        reasoning_summary="auto",
    )
    try:
        message = '[[mock:reasoning content="Six times seven"]] [[mock:usage cached=10]] [[mock:text content="42"]]'
        events = await collect(llm, user(message))
    finally:
        await llm.close()
    assert "".join(e.text for e in events if isinstance(e, ReasoningChunk)) == "Six times seven"
    assert text(events) == "42"
    first_text = next(i for i, e in enumerate(events) if isinstance(e, TextChunk))
    assert all(not isinstance(e, ReasoningChunk) for e in events[first_text:])
    done = events[-1]
    assert isinstance(done, Completed) and done.usage is not None
    assert (done.usage.reasoning_tokens, done.usage.cached_tokens, done.usage.completion_tokens) == (3, 10, 4)
    assert mock_llm.requests[-1]["reasoning"] == {"summary": "auto"}


async def test_parallel_function_calls(llm: LLMClient) -> None:
    message = '[[mock:tool name=calculate args={"expression": "6*7"}]] [[mock:tool name=get_current_time]]'
    events = await collect(llm, user(message), TOOLS)
    headers = [e for e in events if isinstance(e, ToolCallHeader)]
    assert [h.name for h in headers] == ["calculate", "get_current_time"]
    done = events[-1]
    assert isinstance(done, Completed) and done.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == [
        (headers[0].id, "calculate", {"expression": "6*7"}),
        (headers[1].id, "get_current_time", {}),
    ]
    streamed = "".join(e.text for e in events if isinstance(e, ToolArgumentsDelta) and e.id == headers[0].id)
    assert streamed == '{"expression":"6*7"}'


async def test_tool_results_go_back_as_function_call_outputs(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    history = [
        {"role": "user", "content": "[[mock:tool name=calculate]]"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "calculate", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    events = await collect(llm, history, TOOLS)
    assert text(events) == "Here is what the tools told me. calculate returned: 42"


async def test_a_rate_limit_is_retried_before_the_first_event(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    events = await collect(llm, user("[[mock:rate_limit times=2 key=r retry_after=0]] [[mock:text tokens=2]]"))
    assert isinstance(events[-1], Completed) and len(mock_llm.requests) == 3


@pytest.mark.parametrize(
    ("marker", "retryable", "code"),
    [
        ("[[mock:region_block]]", False, "unsupported_country_region_territory"),
        ("[[mock:context_length]]", False, "context_length_exceeded"),
        ("[[mock:server_error]]", True, "server_error"),
    ],
)
async def test_status_errors_are_classified(mock_llm: MockLLMServer, marker: str, retryable: bool, code: str) -> None:
    llm = client(mock_llm.base_url, retries=0)
    try:
        with pytest.raises(ModelError) as caught:
            await collect(llm, user(marker))
    finally:
        await llm.close()
    assert (caught.value.retryable, caught.value.provider_code) == (retryable, code)
    assert isinstance(caught.value.__cause__, openai.APIStatusError)


async def test_an_error_event_before_any_output_is_retried(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    message = "[[mock:stream_error after=1 times=1 key=e]] [[mock:text content=fine]]"
    events = await collect(llm, user(message))
    assert text(events) == "fine" and len(mock_llm.requests) == 2


async def test_a_failed_response_after_text_is_not_retried(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    seen: list[ModelEvent] = []
    message = "[[mock:text tokens=6]] [[mock:stream_error after=6 event=failed code=server_error]]"
    with pytest.raises(ModelError) as caught:
        async for event in llm.stream(user(message)):
            seen.append(event)
    # created, item added, part added, then three text deltas: the failure cuts the fourth.
    assert text(seen) == "Lorem ipsum dolor"
    assert caught.value.provider_code == "server_error" and caught.value.retryable
    assert len(mock_llm.requests) == 1


async def test_an_in_stream_error_with_a_refusal_code_is_not_retried(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    with pytest.raises(ModelError) as caught:
        await collect(llm, user('[[mock:stream_error after=1 code=invalid_prompt message="bad prompt"]]'))
    assert not caught.value.retryable and caught.value.provider_code == "invalid_prompt"
    assert len(mock_llm.requests) == 1


async def test_an_incomplete_response_is_an_error(llm: LLMClient) -> None:
    with pytest.raises(ModelError) as caught:
        await collect(llm, user("[[mock:text tokens=3]] [[mock:incomplete reason=max_output_tokens]]"))
    assert caught.value.provider_code == "max_output_tokens" and not caught.value.retryable
    with pytest.raises(ModelError) as filtered:
        await collect(llm, user("[[mock:incomplete reason=content_filter]]"))
    assert filtered.value.provider_code == "content_filter"


async def test_a_cut_stream_is_retried_only_before_output(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    events = await collect(llm, user("[[mock:cut after=1 times=1 key=c]] [[mock:text tokens=2]]"))
    assert isinstance(events[-1], Completed) and len(mock_llm.requests) == 2
    with pytest.raises(ModelError) as caught:
        await collect(llm, user("[[mock:text tokens=8]] [[mock:cut after=5]]"))
    assert caught.value.provider_code == "connection_error" and len(mock_llm.requests) == 3


async def test_a_stream_that_ends_without_completed_is_truncated() -> None:
    created = b'data: {"type":"response.created","response":{"id":"r"}}\n\n'
    delta = b'data: {"type":"response.output_text.delta","output_index":0,"delta":"Hi"}\n\n'
    async with RawModel([created, delta]) as server:
        llm = client(server.base_url, retries=0)
        try:
            with pytest.raises(ModelError) as caught:
                await collect(llm, user("hi"))
        finally:
            await llm.close()
    assert caught.value.provider_code == "truncated"
    assert server.requests[0][0] == "POST /v1/responses HTTP/1.1"


async def test_calls_only_in_the_final_response_are_still_reported() -> None:
    # A gateway that sends no item events: the function call is read from `response.completed`.
    item = '{"type":"function_call","id":"fc_1","call_id":"call_9","name":"calc","arguments":"{\\"a\\": 1}"}'
    completed = b'data: {"type":"response.completed","response":{"output":[' + item.encode() + b"]}}\n\n"
    async with RawModel([completed]) as server:
        llm = client(server.base_url, retries=0)
        try:
            events = await collect(llm, user("hi"))
        finally:
            await llm.close()
    done = events[-1]
    assert isinstance(done, Completed) and [(c.id, c.arguments) for c in done.tool_calls] == [("call_9", {"a": 1})]
    assert ToolCallHeader("call_9", "calc") in events


async def test_a_stalled_stream_times_out(mock_llm: MockLLMServer) -> None:
    llm = client(mock_llm.base_url, idle=0.3)
    try:
        with pytest.raises(ModelError) as caught:
            await collect(llm, user("[[mock:text tokens=6]] [[mock:stall after=5 seconds=30]]"))
    finally:
        await llm.close()
    assert caught.value.provider_code == "idle_timeout" and len(mock_llm.requests) == 1


async def test_complete_reads_the_output_text(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    title = await llm.complete(user('[[mock:text content="Trip to Rome"]]'), max_tokens=8)
    assert title == "Trip to Rome"
    body = mock_llm.requests[-1]
    assert body["max_output_tokens"] == 16 and not body.get("stream") and body["store"] is False
