"""`LLMClient` over real HTTP: the project's mock model for the scenarios it knows, a raw HTTP/1.1 server for exact
stream bytes (in-stream errors, line endings, events split across reads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import httpx2
import openai
import orjson
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
    Usage,
)
from backend.chat.llm_sse import sse_data
from backend.chat.llm_streams import HttpxReply
from backend.devtools.mock_llm import MockLLMServer
from backend.errors import ModelError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculate",
            "description": "Evaluate an arithmetic expression",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        },
    }
]


def client(base_url: str, *, retries: int = 2, idle: float = 1.0) -> LLMClient:
    return LLMClient(
        base_url=base_url,
        api_key="test-key",
        model="mock-model",
        retry=RetryPolicy(retries, 0.01, 0.05),
        idle_timeout=idle,
    )


async def collect(
    llm: LLMClient, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
) -> list[Any]:
    return [event async for event in llm.stream(messages, tools)]


def text(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextChunk))


@pytest.fixture
async def llm(mock_llm: MockLLMServer) -> AsyncIterator[LLMClient]:
    model = client(mock_llm.base_url)
    yield model
    await model.close()


# --- the mock model ------------------------------------------------------------------------------------------


async def test_text_stream_ends_with_usage(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    events = await collect(llm, [{"role": "user", "content": '[[mock:text content="Hello there, friend"]]'}])

    assert text(events) == "Hello there, friend"
    assert all(isinstance(e, TextChunk) for e in events[:-1])
    done = events[-1]
    assert isinstance(done, Completed)
    assert done.finish_reason == "stop" and done.tool_calls == []
    assert done.usage is not None and done.usage.prompt_tokens > 0 and done.usage.completion_tokens == 3


async def test_the_request_carries_our_messages_and_tools_as_given(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Grüße, 東京 🚀"},
        {
            "role": "assistant",
            "content": "checking",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calculate", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "[[mock:text tokens=2]]", "name": "alice"},
    ]
    await collect(llm, messages, TOOLS)

    body = mock_llm.requests[-1]
    assert body["messages"] == messages
    assert body["tools"] == TOOLS
    assert body["model"] == "mock-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_a_call_without_tools_sends_no_tools_key(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    await collect(llm, [{"role": "user", "content": "hi"}])
    assert "tools" not in mock_llm.requests[-1]


async def test_parallel_tool_calls_are_collected_by_index(llm: LLMClient) -> None:
    prompt = '[[mock:tool name=calculate args={"expression": "6*7"}]] [[mock:tool name=lookup args={"id": 7}]]'
    events = await collect(llm, [{"role": "user", "content": prompt}], TOOLS)

    started = [e for e in events if isinstance(e, ToolCallHeader)]
    assert [s.name for s in started] == ["calculate", "lookup"]
    done = events[-1]
    assert isinstance(done, Completed) and done.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == [
        (started[0].id, "calculate", {"expression": "6*7"}),
        (started[1].id, "lookup", {"id": 7}),
    ]
    # The arguments arrived in several fragments, interleaved across the two calls.
    assert done.tool_calls[0].arguments_json == '{"expression":"6*7"}'


async def test_a_stream_cut_mid_arguments_has_passed_on_what_the_call_received(llm: LLMClient) -> None:
    """What a call had received when its stream dropped is known to the turn (it closes the call with it)."""
    prompt = '[[mock:cut after=4]] [[mock:tool name=calculate args={"expression": "1 + 2 + 3"}]]'
    events: list[Any] = []
    with pytest.raises(ModelError):
        async for e in llm.stream([{"role": "user", "content": prompt}], TOOLS):
            events.append(e)
    [started] = [e for e in events if isinstance(e, ToolCallHeader)]
    fragments = [e for e in events if isinstance(e, ToolArgumentsDelta)]
    assert {f.id for f in fragments} == {started.id}
    assert "".join(f.text for f in fragments) == '{"expression":"1'  # two 8-character fragments


async def test_invalid_tool_arguments_are_reported_not_raised(llm: LLMClient) -> None:
    events = await collect(llm, [{"role": "user", "content": '[[mock:bad_tool_args name=calculate args={"a": 1}]]'}])
    [call] = events[-1].tool_calls
    assert call.arguments is None and call.parse_error is not None and call.name == "calculate"


async def test_rate_limit_is_retried_before_the_first_chunk(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    events = await collect(llm, [{"role": "user", "content": "[[mock:rate_limit times=2 key=rl retry_after=0]] hi"}])
    assert isinstance(events[-1], Completed)
    assert len(mock_llm.requests) == 3


async def test_rate_limit_error_keeps_code_and_retry_after(mock_llm: MockLLMServer) -> None:
    llm = client(mock_llm.base_url, retries=0)
    try:
        with pytest.raises(ModelError) as caught:
            await collect(llm, [{"role": "user", "content": "[[mock:rate_limit retry_after=3]]"}])
    finally:
        await llm.close()
    assert caught.value.retryable
    assert caught.value.provider_code == "rate_limit_exceeded"
    assert caught.value.retry_after == 3.0
    assert isinstance(caught.value.__cause__, openai.RateLimitError)


@pytest.mark.parametrize(
    ("marker", "retryable", "code", "words"),
    [
        ("[[mock:server_error]]", True, None, "failed (500)"),
        ("[[mock:region_block]]", False, "unsupported_country_region_territory", "country or region"),
        ("[[mock:context_length]]", False, "context_length_exceeded", "too long"),
    ],
)
async def test_status_errors_are_translated(
    mock_llm: MockLLMServer, marker: str, retryable: bool, code: str | None, words: str
) -> None:
    llm = client(mock_llm.base_url, retries=0)
    try:
        with pytest.raises(ModelError) as caught:
            await collect(llm, [{"role": "user", "content": marker}])
    finally:
        await llm.close()
    assert caught.value.retryable is retryable
    assert words in caught.value.message
    if code is not None:
        assert caught.value.provider_code == code
    assert isinstance(caught.value.__cause__, openai.APIStatusError)


async def test_a_connection_cut_before_any_text_is_retried(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    # The first event is the role chunk, which carries no text: nothing was produced yet.
    events = await collect(llm, [{"role": "user", "content": "[[mock:cut after=1 times=1 key=c]] hello"}])
    assert isinstance(events[-1], Completed)
    assert len(mock_llm.requests) == 2


async def test_a_connection_cut_after_text_is_not_retried(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    seen: list[ModelEvent] = []
    with pytest.raises(ModelError) as caught:
        async for event in llm.stream([{"role": "user", "content": "[[mock:text tokens=10]] [[mock:cut after=4]]"}]):
            seen.append(event)
    assert caught.value.provider_code == "connection_error" and caught.value.retryable
    assert len([e for e in seen if isinstance(e, TextChunk)]) == 3
    assert len(mock_llm.requests) == 1


async def test_a_stalled_stream_times_out_per_chunk(mock_llm: MockLLMServer) -> None:
    llm = client(mock_llm.base_url, idle=0.3)
    try:
        with pytest.raises(ModelError) as caught:
            await collect(
                llm, [{"role": "user", "content": "[[mock:text tokens=6]] [[mock:stall after=3 seconds=30]]"}]
            )
    finally:
        await llm.close()
    assert caught.value.provider_code == "idle_timeout"
    assert len(mock_llm.requests) == 1  # text had been produced: no retry


async def test_a_slow_but_steady_stream_is_not_idle(mock_llm: MockLLMServer) -> None:
    # 12 chunks 100 ms apart take longer than the idle timeout, but no gap does.
    llm = client(mock_llm.base_url, idle=0.5)
    try:
        events = await collect(llm, [{"role": "user", "content": "[[mock:text tokens=10 delay_ms=100]]"}])
    finally:
        await llm.close()
    assert isinstance(events[-1], Completed)


async def test_complete_returns_the_text(llm: LLMClient, mock_llm: MockLLMServer) -> None:
    title = await llm.complete([{"role": "user", "content": '[[mock:text content="Trip to Rome"]]'}], max_tokens=20)
    assert title == "Trip to Rome"
    body = mock_llm.requests[-1]
    assert body["max_tokens"] == 20 and body["model"] == "mock-model" and not body.get("stream")

    await llm.complete([{"role": "user", "content": "hi"}], model="other-model")
    assert mock_llm.requests[-1]["model"] == "other-model"


async def test_complete_translates_errors(llm: LLMClient) -> None:
    with pytest.raises(ModelError) as caught:
        await llm.complete([{"role": "user", "content": "[[mock:context_length]]"}])
    assert caught.value.provider_code == "context_length_exceeded"


async def test_an_unreachable_provider_is_a_connection_error() -> None:
    llm = client("http://127.0.0.1:9/v1", retries=0)
    try:
        with pytest.raises(ModelError) as caught:
            await collect(llm, [{"role": "user", "content": "hi"}])
        with pytest.raises(ModelError):
            await llm.complete([{"role": "user", "content": "hi"}])
    finally:
        await llm.close()
    assert caught.value.provider_code == "connection_error" and caught.value.retryable


# --- exact stream bytes ----------------------------------------------------------------------------------------


class RawModel:
    """An HTTP/1.1 server that answers each request with the next scripted body, written piece by piece with a
    pause in between, so that the client reads the pieces separately."""

    def __init__(self, *bodies: list[bytes]) -> None:
        self.bodies = list(bodies)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._server: asyncio.Server | None = None
        self._handlers: list[asyncio.Task[Any]] = []

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            await self._answer(reader, writer)
        except ConnectionError:
            pass  # the client went away (after `[DONE]`, or on an error event)
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *lines = head.split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((request_line, headers, body))
        pieces = self.bodies.pop(0)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            b"connection: close\r\n\r\n"
        )
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }


FINISH = event(delta({}, "stop"))
DONE = b"data: [DONE]\n\n"


async def raw_stream(*bodies: list[bytes], retries: int = 0) -> tuple[list[Any], RawModel]:
    async with RawModel(*bodies) as server:
        llm = client(server.base_url, retries=retries)
        try:
            return await collect(llm, [{"role": "user", "content": "hi"}]), server
        finally:
            await llm.close()


async def test_the_request_goes_through_the_sdk_client() -> None:
    _, server = await raw_stream([event(delta({"content": "ok"})), FINISH, DONE])
    [(request_line, headers, body)] = server.requests
    assert request_line == "POST /v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == "Bearer test-key"
    assert headers["content-type"] == "application/json"
    assert headers["x-stainless-retry-count"] == "0"
    assert orjson.loads(body)["messages"] == [{"role": "user", "content": "hi"}]


async def test_an_error_event_after_text_raises_and_is_not_retried() -> None:
    error = {"error": {"message": "The server had an error", "type": "server_error", "code": None}}
    async with RawModel([event(delta({"content": "Hel"})), event(error), FINISH, DONE]) as server:
        llm = client(server.base_url, retries=2)
        try:
            with pytest.raises(ModelError) as caught:
                await collect(llm, [{"role": "user", "content": "hi"}])
        finally:
            await llm.close()
    # Classified as the server error it is, but text was streamed: no second attempt.
    assert caught.value.retryable and caught.value.provider_code == "server_error"
    assert len(server.requests) == 1
    cause = caught.value.__cause__
    assert isinstance(cause, openai.APIError) and not isinstance(cause, openai.APIStatusError)
    assert cause.message == "The server had an error"
    assert cause.body == error["error"]


async def test_a_gateways_in_stream_timeout_before_any_text_is_retried() -> None:
    # LiteLLM proxy ends a stalled upstream with an error object whose code is the status 408, as a string.
    stalled = {"error": {"message": "litellm.Timeout: Connection timed out", "type": None, "code": "408"}}
    events, server = await raw_stream([event(stalled)], [event(delta({"content": "ok"})), FINISH, DONE], retries=1)
    assert text(events) == "ok" and len(server.requests) == 2


async def test_an_error_event_without_a_message_gets_a_default_one() -> None:
    with pytest.raises(ModelError) as caught:
        await raw_stream([event({"error": "boom"})])
    assert isinstance(caught.value.__cause__, openai.APIError)
    assert caught.value.__cause__.message == "An error occurred during streaming"


async def test_a_chunk_with_only_usage_and_tool_calls_split_across_chunks() -> None:
    call = {"index": 0, "id": "call_9", "type": "function", "function": {"name": "calc", "arguments": ""}}
    body = [
        event(delta({"role": "assistant", "content": None})),
        event(delta({"tool_calls": [call]})),
        event(delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"expr'}}]})),
        event(delta({"tool_calls": [{"index": 0, "function": {"arguments": 'ession": "1+'}}]})),
        event(delta({"tool_calls": [{"index": 0, "function": {"arguments": '1"}'}}]})),
        event(delta({}, "tool_calls")),
        event({"id": "x", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}),
        DONE,
    ]
    events, _ = await raw_stream(body)
    assert events[0] == ToolCallHeader("call_9", "calc")
    done = events[-1]
    assert isinstance(done, Completed)
    assert done.finish_reason == "tool_calls"
    assert done.usage == Usage(12, 5)
    [tool_call] = done.tool_calls
    assert tool_call.arguments == {"expression": "1+1"} and tool_call.arguments_json == '{"expression": "1+1"}'


async def test_argument_fragments_are_passed_on_once_the_call_is_known() -> None:
    """Fragments sent before the call's id and name come joined right after its start, the later ones one by one."""
    body = [
        event(delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]})),
        event(delta({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "calc", "arguments": ": 1"}}]})),
        event(delta({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]})),
        event(delta({}, "tool_calls")),
        DONE,
    ]
    events, _ = await raw_stream(body)
    assert events[:3] == [
        ToolCallHeader("call_1", "calc"),
        ToolArgumentsDelta("call_1", '{"a": 1'),
        ToolArgumentsDelta("call_1", "}"),
    ]
    assert events[-1].tool_calls[0].arguments == {"a": 1}


async def test_usage_fields_may_be_null() -> None:
    usage = event({"id": "x", "choices": [], "usage": {"prompt_tokens": None, "completion_tokens": 3}})
    events, _ = await raw_stream([event(delta({"content": "a"})), FINISH, usage, DONE])
    assert events[-1].usage == Usage(0, 3)


async def test_reasoning_deltas_of_either_name_become_reasoning_chunks() -> None:
    """DeepSeek and vLLM stream `reasoning_content`, OpenRouter `reasoning`; empty and null ones are skipped."""
    body = [
        event(delta({"role": "assistant", "content": "", "reasoning_content": None})),
        event(delta({"reasoning_content": "Let me "})),
        event(delta({"reasoning": "think."})),
        event(delta({"reasoning": ""})),
        event(delta({"content": "42"})),
        FINISH,
        DONE,
    ]
    events, _ = await raw_stream(body)
    assert events[:3] == [ReasoningChunk("Let me "), ReasoningChunk("think."), TextChunk("42")]


async def test_usage_details_give_cached_and_reasoning_tokens() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    events, _ = await raw_stream([event(delta({"content": "a"})), FINISH, event({"choices": [], "usage": usage}), DONE])
    assert events[-1].usage == Usage(100, 30, cached_tokens=64, reasoning_tokens=12)


async def test_malformed_usage_details_count_as_zero() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": None}
    usage["completion_tokens_details"] = {"reasoning_tokens": "many"}
    events, _ = await raw_stream([event(delta({"content": "a"})), FINISH, event({"choices": [], "usage": usage}), DONE])
    assert events[-1].usage == Usage(5, 2)


async def test_the_mock_streams_reasoning_and_reports_it_in_the_usage(llm: LLMClient) -> None:
    message = '[[mock:reasoning content="Hmm, six sevens"]] [[mock:usage cached=3]] [[mock:text content="42"]]'
    events = await collect(llm, [{"role": "user", "content": message}])
    assert "".join(e.text for e in events if isinstance(e, ReasoningChunk)) == "Hmm, six sevens"
    assert text(events) == "42"
    usage = events[-1].usage
    assert usage.reasoning_tokens == 3 and usage.completion_tokens == 4 and usage.cached_tokens == 3


async def test_sse_framing_crlf_comments_multiline_data_and_split_reads() -> None:
    first = orjson.dumps(delta({"content": "Hello"}))
    second = orjson.dumps(delta({"content": ", world"}))
    body = [
        b": keep-alive comment\r\n\r\n",
        b"event: message\r\nid: 1\r\ndata: " + first[:10],  # an event split in the middle of a line
        first[10:] + b"\r",  # ... and between the CR and the LF of a CRLF
        b"\n\r\n",
        b"data: " + second.replace(b',"object"', b',\ndata: "object"') + b"\n\n",  # one JSON value, two data lines
        b"data:" + orjson.dumps(delta({}, "stop")) + b"\r\r",  # no space after the colon; CR line ends
        DONE,
        b"data: this is never read\n\n",
    ]
    events, _ = await raw_stream(body)
    assert text(events) == "Hello, world"
    assert isinstance(events[-1], Completed) and events[-1].finish_reason == "stop"


async def test_a_malformed_event_is_a_model_error() -> None:
    with pytest.raises(ModelError) as caught:
        await raw_stream([b"data: {not json\n\n", FINISH, DONE])
    assert caught.value.provider_code == "malformed_stream"


async def test_a_stream_without_a_finish_reason_is_truncated() -> None:
    with pytest.raises(ModelError) as caught:
        await raw_stream([event(delta({"content": "Hel"})), DONE])
    assert caught.value.provider_code == "truncated" and caught.value.retryable


async def test_an_unterminated_last_event_is_dropped() -> None:
    # Per the SSE spec an event only counts once a blank line ends it; the finish chunk below never is.
    with pytest.raises(ModelError) as caught:
        await raw_stream([event(delta({"content": "Hel"})), b"data: " + orjson.dumps(delta({}, "stop"))])
    assert caught.value.provider_code == "truncated"


async def test_sse_data_stops_at_done() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"data: 1\n", b"\ndata: [DONE]\n\n", b"data: 2\n\n"):
            yield piece

    response = httpx2.Response(200, content=pieces(), request=httpx2.Request("POST", "http://model.test/"))
    assert [d async for d in sse_data(HttpxReply(response))] == [b"1"]


# --- the usage hook (per-user token budgets) -------------------------------------------------------------------


async def test_every_call_that_reports_usage_reaches_the_hook(mock_llm: MockLLMServer) -> None:
    heard: list[Usage] = []
    llm = LLMClient(
        base_url=mock_llm.base_url,
        api_key="test-key",
        model="mock-model",
        retry=RetryPolicy(2, 0.01, 0.05),
        idle_timeout=1.0,
        on_usage=heard.append,
    )
    try:
        streamed = (await collect(llm, [{"role": "user", "content": "[[mock:text tokens=7]]"}]))[-1]
        assert isinstance(streamed, Completed) and heard == [streamed.usage]
        assert await llm.complete([{"role": "user", "content": '[[mock:text content="A short title"]]'}])
        assert len(heard) == 2 and heard[1].completion_tokens == 3 and heard[1].prompt_tokens > 0
        with pytest.raises(ModelError):  # failed attempts report nothing
            await collect(llm, [{"role": "user", "content": "[[mock:server_error]]"}])
        assert len(heard) == 2
    finally:
        await llm.close()


async def test_a_failing_usage_hook_never_breaks_a_call(mock_llm: MockLLMServer) -> None:
    def broken(_: Usage) -> None:
        raise RuntimeError("hook down")

    llm = LLMClient(
        base_url=mock_llm.base_url,
        api_key="k",
        model="mock-model",
        retry=RetryPolicy(0, 0.01, 0.05),
        idle_timeout=1.0,
        on_usage=broken,
    )
    try:
        assert text(await collect(llm, [{"role": "user", "content": '[[mock:text content="still here"]]'}])) == (
            "still here"
        )
        assert await llm.complete([{"role": "user", "content": '[[mock:text content="fine"]]'}]) == "fine"
    finally:
        await llm.close()


# --- the call observer (metrics) -------------------------------------------------------------------------------


class _Heard:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def succeeded(self, model: str, seconds: float) -> None:
        assert seconds >= 0
        self.events.append(("ok", model))

    def failed(self, model: str, code: str | None, *, retrying: bool) -> None:
        self.events.append(("failed", model, code, retrying))

    def used(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.events.append(("used", model, prompt_tokens > 0, completion_tokens))


async def test_the_observer_hears_each_outcome_each_failed_attempt_and_each_usage(mock_llm: MockLLMServer) -> None:
    heard = _Heard()
    llm = LLMClient(
        base_url=mock_llm.base_url,
        api_key="k",
        model="mock-model",
        retry=RetryPolicy(1, 0.01, 0.05),
        idle_timeout=1.0,
        observer=heard,
    )
    try:
        await collect(
            llm, [{"role": "user", "content": "[[mock:server_error times=1 key=obs]] [[mock:text tokens=4]]"}]
        )
        assert heard.events == [
            ("failed", "mock-model", "server_error", True),
            ("used", "mock-model", True, 4),
            ("ok", "mock-model"),
        ]
        heard.events.clear()
        with pytest.raises(ModelError):
            await collect(llm, [{"role": "user", "content": "[[mock:server_error]]"}])
        assert heard.events == [
            ("failed", "mock-model", "server_error", True),
            ("failed", "mock-model", "server_error", False),  # the retries are spent: this one is an error
        ]
        heard.events.clear()
        assert await llm.complete([{"role": "user", "content": '[[mock:text content="A title"]]'}], model="titles")
        with pytest.raises(ModelError):
            await llm.complete([{"role": "user", "content": "[[mock:region_block]]"}], model="titles")
        assert heard.events == [
            ("ok", "titles"),
            ("used", "titles", True, 2),
            ("failed", "titles", "unsupported_country_region_territory", False),
        ]
    finally:
        await llm.close()


async def test_a_streaming_reply_keeps_its_prompt_at_its_own_size() -> None:
    """A response keeps its request and so the body (the whole prompt) for as long as the reply streams, and the
    body was orjson's write buffer, about ten times the prompt's size: 519 KB for this 50 KB prompt, 8 KB for the
    benchmark's 1 KB, per open stream."""
    import tracemalloc

    import backend.chat.llm as llm_module

    prompt = [{"role": "user", "content": "x" * 50_000 + " [[mock:text tokens=20 delay_ms=20]]"}]
    async with MockLLMServer() as server:
        llm = client(server.base_url)
        streams = [llm.stream(prompt) for _ in range(10)]
        tracemalloc.start()
        try:
            for stream in streams:
                assert isinstance(await anext(stream), TextChunk)  # each response has begun
            # What the model client itself allocated and still holds (the mock, in this process, keeps its copies).
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, llm_module.__file__)])
        finally:
            tracemalloc.stop()
        for stream in streams:
            assert text([e async for e in stream])
    held = sum(stat.size for stat in snapshot.statistics("filename"))
    assert held < 10 * 60_000, held  # each prompt at its own size
