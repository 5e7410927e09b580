"""The mock model server, driven through the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from backend.devtools.mock_llm import MODEL_ID, Marker, MarkerError, MockLLMServer, parse_markers

CLOCK = '[[mock:tool name=get_current_time args={"timezone":"UTC"}]]'


@pytest.fixture
async def llm() -> AsyncIterator[MockLLMServer]:
    async with MockLLMServer() as server:
        yield server


@pytest.fixture
async def sdk(llm: MockLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as client:
        yield client


def user(content: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": content}]


async def stream(
    sdk: openai.AsyncOpenAI, messages: list[ChatCompletionMessageParam], *, usage: bool = True
) -> list[ChatCompletionChunk]:
    response = await sdk.chat.completions.create(
        model=MODEL_ID, messages=messages, stream=True, stream_options={"include_usage": usage}
    )
    return [chunk async for chunk in response]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_of(chunks: list[ChatCompletionChunk]) -> str | None:
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(reasons) <= 1
    return reasons[0] if reasons else None


def tool_calls_of(chunks: list[ChatCompletionChunk]) -> dict[int, dict[str, Any]]:
    """Tool-call deltas collected by index, the way a client has to."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": "", "fragments": 0})
            call["id"] = delta.id or call["id"]
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
                call["fragments"] += 1
    return calls


def follow_up(content: str, calls: dict[int, dict[str, Any]], results: list[str]) -> list[ChatCompletionMessageParam]:
    """The conversation sent back to the model once the tools have run."""
    ordered = [calls[i] for i in sorted(calls)]
    messages = user(content)
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in ordered
            ],
        }
    )
    for call, result in zip(ordered, results, strict=True):
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return messages


def test_parse_markers() -> None:
    text = 'hi [[mock:rate_limit times=2 key=abc]] and [[mock:tool name=t args={"q": "a ]] b", "n": [1]} ]]'
    assert parse_markers(text) == [
        Marker("rate_limit", {"times": 2, "key": "abc"}, "[[mock:rate_limit times=2 key=abc]]"),
        Marker("tool", {"name": "t", "args": {"q": "a ]] b", "n": [1]}}, text[text.index("[[mock:tool") :]),
    ]
    assert parse_markers('[[mock:text delay_ms=2.5 content="two words"]]')[0].params == {
        "delay_ms": 2.5,
        "content": "two words",
    }
    assert parse_markers("no markers [[here]]") == []
    with pytest.raises(MarkerError):
        parse_markers("[[mock:text tokens=]]")
    with pytest.raises(MarkerError):
        parse_markers("[[mock:text tokens=3")


async def test_models(sdk: openai.AsyncOpenAI) -> None:
    assert [m.id async for m in sdk.models.list()] == [MODEL_ID]
    assert (await sdk.models.retrieve("gpt-anything")).id == "gpt-anything"


async def test_demo_answer_without_marker(sdk: openai.AsyncOpenAI) -> None:
    first = await stream(sdk, user("What is the weather in Paris?"))
    text = text_of(first)
    assert "demo model" in text
    assert 'You said: "What is the weather in Paris?"' in text
    assert finish_of(first) == "stop"
    assert first[0].choices[0].delta.role == "assistant"
    assert text_of(await stream(sdk, user("What is the weather in Paris?"))) == text


async def test_text_tokens_and_usage(sdk: openai.AsyncOpenAI) -> None:
    chunks = await stream(sdk, user("[[mock:text tokens=50]]"))
    tokens = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(tokens) == 50
    assert text_of(chunks).startswith("Lorem ipsum dolor")
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 50
    assert last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + 50


async def test_text_content_and_no_usage_unless_asked(sdk: openai.AsyncOpenAI) -> None:
    chunks = await stream(sdk, user('[[mock:text content="A short title"]]'), usage=False)
    assert text_of(chunks) == "A short title"
    assert all(c.choices and c.usage is None for c in chunks)


async def test_empty_text(sdk: openai.AsyncOpenAI) -> None:
    chunks = await stream(sdk, user("[[mock:text tokens=0]]"))
    assert text_of(chunks) == ""
    assert finish_of(chunks) == "stop"


async def test_delay_between_tokens(sdk: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    await stream(sdk, user("[[mock:text tokens=5 delay_ms=40]]"))
    assert time.monotonic() - started >= 0.2


async def test_the_stream_closes_right_after_its_last_token(sdk: openai.AsyncOpenAI) -> None:
    """The pace is between tokens: the finish reason, the usage and `[DONE]` come with the last token, as a
    provider sends them (paced too, they kept every reply three intervals longer than its content)."""
    response = await sdk.chat.completions.create(
        model=MODEL_ID,
        messages=user("[[mock:text tokens=3 delay_ms=200]]"),
        stream=True,
        stream_options={"include_usage": True},
    )
    started = time.monotonic()
    last_token = 0.0
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            last_token = time.monotonic()
    ended = time.monotonic()
    assert last_token - started >= 0.4  # paced: two intervals between three tokens
    assert ended - last_token < 0.15  # not one interval more, let alone three


async def test_server_defaults() -> None:
    async with (
        MockLLMServer(default_tokens=7, default_delay_ms=1) as llm,
        openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as sdk,
    ):
        demo = await stream(sdk, user("hello"))
        assert text_of(demo).startswith("Hi! I'm the copilot-chat demo model")
        assert demo[-1].usage is not None and demo[-1].usage.completion_tokens == 7
        long = await stream(sdk, user("[[mock:text]]"))
        assert long[-1].usage is not None and long[-1].usage.completion_tokens == 7


async def test_content_as_parts(sdk: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "[[mock:text tokens=3]]"}]}
    ]
    assert text_of(await stream(sdk, messages)) == "Lorem ipsum dolor"


async def test_single_tool_call(sdk: openai.AsyncOpenAI) -> None:
    chunks = await stream(sdk, user(f"What time is it? {CLOCK}"))
    calls = tool_calls_of(chunks)
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_current_time"
    assert calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"timezone": "UTC"}
    assert calls[0]["fragments"] > 1
    assert finish_of(chunks) == "tool_calls"
    assert text_of(chunks) == ""


async def test_parallel_tool_calls_interleave(sdk: openai.AsyncOpenAI) -> None:
    chunks = await stream(sdk, user(CLOCK + '[[mock:tool name=get_weather args={"city":"Paris","unit":"C"}]]'))
    calls = tool_calls_of(chunks)
    assert {i: c["name"] for i, c in calls.items()} == {0: "get_current_time", 1: "get_weather"}
    assert json.loads(calls[1]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert calls[0]["id"] != calls[1]["id"]
    indexes = [d.index for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert indexes != sorted(indexes)


@pytest.mark.parametrize(
    "markers",
    [CLOCK, "[[mock:bad_tool_args name=get_current_time times=1 key=k]]", CLOCK + "[[mock:tool name=get_weather]]"],
)
async def test_tool_results_get_a_final_answer(sdk: openai.AsyncOpenAI, markers: str) -> None:
    content = f"What time is it? {markers}"
    calls = tool_calls_of(await stream(sdk, user(content)))
    results = [f'{{"result": "value-{i}"}}' for i in calls]
    answer = await stream(sdk, follow_up(content, calls, results))
    assert finish_of(answer) == "stop"
    assert tool_calls_of(answer) == {}
    assert 'get_current_time returned: {"result": "value-0"}' in text_of(answer)
    if len(calls) > 1:
        assert 'get_weather returned: {"result": "value-1"}' in text_of(answer)


async def test_rate_limit_then_success(sdk: openai.AsyncOpenAI) -> None:
    content = "[[mock:rate_limit times=2 key=abc]]"
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            await stream(sdk, user(content))
        assert caught.value.status_code == 429
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["retry-after"] == "1"
    assert "demo model" in text_of(await stream(sdk, user(content)))
    with pytest.raises(openai.RateLimitError):  # another key has its own counter
        await stream(sdk, user("[[mock:rate_limit times=1 key=other]]"))


async def test_sdk_retries_through_rate_limits(llm: MockLLMServer) -> None:
    async with openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=2) as sdk:
        chunks = await stream(sdk, user("[[mock:rate_limit times=2 key=r retry_after=0.01]][[mock:text tokens=2]]"))
    assert text_of(chunks) == "Lorem ipsum"
    assert len(llm.requests) == 3


async def test_server_error(sdk: openai.AsyncOpenAI) -> None:
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await stream(sdk, user("[[mock:server_error]]"))
    with pytest.raises(openai.InternalServerError) as caught:
        await stream(sdk, user("[[mock:server_error times=1 key=s status=503]]"))
    assert caught.value.status_code == 503
    assert finish_of(await stream(sdk, user("[[mock:server_error times=1 key=s status=503]]"))) == "stop"


async def test_region_block(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await stream(sdk, user("[[mock:region_block]]"))
    assert caught.value.code == "unsupported_country_region_territory"
    assert "Country, region, or territory not supported" in caught.value.message


async def test_context_length_exceeded(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await stream(sdk, user("[[mock:context_length]]"))
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"


async def test_malformed_tool_arguments_then_valid(sdk: openai.AsyncOpenAI) -> None:
    content = '[[mock:bad_tool_args name=lookup args={"id": 7} times=1 key=m]]'
    bad = tool_calls_of(await stream(sdk, user(content)))[0]
    assert bad["name"] == "lookup"
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad["arguments"])
    good = tool_calls_of(await stream(sdk, user(content)))[0]
    assert json.loads(good["arguments"]) == {"id": 7}


async def test_bad_marker_is_a_bad_request(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown mock scenario"):
        await stream(sdk, user("[[mock:nonsense]]"))
    with pytest.raises(openai.BadRequestError, match="non-negative integer"):
        await stream(sdk, user("[[mock:text tokens=many]]"))


async def test_cut_stream_raises_in_the_sdk(sdk: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    received: list[ChatCompletionChunk] = []
    response = await sdk.chat.completions.create(
        model=MODEL_ID, messages=user("[[mock:cut after=3]][[mock:text tokens=20]]"), stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        async for chunk in response:
            received.append(chunk)
    assert len(received) == 3
    assert finish_of(received) is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_cut_inside_tool_arguments(sdk: openai.AsyncOpenAI) -> None:
    received: list[ChatCompletionChunk] = []
    response = await sdk.chat.completions.create(
        model=MODEL_ID, messages=user('[[mock:cut after=3]][[mock:tool name=lookup args={"id": 7}]]'), stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        async for chunk in response:
            received.append(chunk)
    arguments = tool_calls_of(received)[0]["arguments"]
    assert arguments and not arguments.endswith("}")


async def test_cut_non_streaming(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await sdk.chat.completions.create(model=MODEL_ID, messages=user("[[mock:cut]]"))


async def test_stall_trips_the_read_timeout(sdk: openai.AsyncOpenAI) -> None:
    received: list[ChatCompletionChunk] = []
    started = time.monotonic()
    response = await sdk.chat.completions.create(
        model=MODEL_ID, messages=user("[[mock:stall after=2 seconds=30]]"), stream=True, timeout=0.3
    )
    with pytest.raises(openai.APITimeoutError):
        async for chunk in response:
            received.append(chunk)
    assert len(received) == 2
    assert time.monotonic() - started < 5


async def test_stall_then_carry_on(sdk: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    chunks = await stream(sdk, user("[[mock:stall after=1 seconds=0.2]][[mock:text tokens=3]]"))
    assert time.monotonic() - started >= 0.2
    assert text_of(chunks) == "Lorem ipsum dolor"


async def test_non_streaming(sdk: openai.AsyncOpenAI) -> None:
    text = await sdk.chat.completions.create(model=MODEL_ID, messages=user('[[mock:text content="Trip to Rome"]]'))
    assert text.object == "chat.completion"
    assert text.choices[0].message.content == "Trip to Rome"
    assert text.choices[0].finish_reason == "stop"
    assert text.usage is not None and text.usage.completion_tokens == 3
    tool = await sdk.chat.completions.create(model=MODEL_ID, messages=user(CLOCK))
    calls = tool.choices[0].message.tool_calls or []
    assert tool.choices[0].finish_reason == "tool_calls"
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls if c.type == "function"] == [
        ("function", "get_current_time", {"timezone": "UTC"})
    ]


async def test_requests_are_recorded(llm: MockLLMServer, sdk: openai.AsyncOpenAI) -> None:
    await sdk.chat.completions.create(model="summariser", messages=user("Summarise this conversation"))
    assert llm.requests[-1]["model"] == "summariser"
    assert llm.requests[-1]["messages"] == [{"role": "user", "content": "Summarise this conversation"}]
    async with httpx.AsyncClient(base_url=llm.base_url.removesuffix("/v1")) as http:
        recorded = (await http.get("/_mock/requests")).json()
        assert recorded == llm.requests
        assert (await http.delete("/_mock/requests")).status_code == 204
    assert llm.requests == []


async def test_many_concurrent_streams(sdk: openai.AsyncOpenAI) -> None:
    results = await asyncio.gather(*(stream(sdk, user("[[mock:text tokens=20 delay_ms=1]]")) for _ in range(100)))
    assert all(r[-1].usage is not None and r[-1].usage.completion_tokens == 20 for r in results)
