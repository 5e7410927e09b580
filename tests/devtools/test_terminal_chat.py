"""The terminal client: rendering, SSE parsing, the `copilot` subcommands, and replies from the real service."""

from __future__ import annotations

import asyncio
import builtins
import io
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from backend import cli
from backend.config import Settings
from backend.devtools import mock_llm, terminal_chat
from backend.devtools.terminal_chat import (
    ChatClientError,
    chat,
    check_session,
    create_session,
    iter_chunks,
    open_client,
    render,
    send,
)
from tests.conftest import LiveServer, make_token

CALC = {"type": "tool-input-available", "toolCallId": "c1", "toolName": "calculate", "input": {"expression": "6*7"}}
CALC_MARKER = '[[mock:tool name=calculate args={"expression": "6*7"}]]'
CALC_LINE = '⚙ calculate({"expression":"6*7"}) → {"expression":"6*7","result":42}'


# --- render -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk",
    [
        {"type": "start", "messageId": "m1", "messageMetadata": {"taskId": "t1"}},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-end", "id": "text-0"},
        {"type": "tool-input-start", "toolCallId": "c1", "toolName": "calculate"},
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": '{"ex'},
        CALC,
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
        {"type": "finish", "finishReason": "error"},
        {"type": "finish"},
        {"type": "message-metadata", "messageMetadata": {"x": 1}},
        {"type": "data-status", "data": {"stage": "compacting"}, "transient": True},
        {"type": "some-future-chunk"},
    ],
)
def test_chunks_that_only_structure_the_stream_show_nothing(chunk: dict[str, Any]) -> None:
    assert render(chunk) == ""


def test_text_delta_is_shown_as_it_is() -> None:
    assert render({"type": "text-delta", "id": "text-0", "delta": " two\nlines "}) == " two\nlines "


def test_tool_output_is_one_line_with_the_call() -> None:
    output = {"type": "tool-output-available", "toolCallId": "c1", "output": {"expression": "6*7", "result": 42}}
    assert render(output, CALC) == CALC_LINE


def test_tool_output_strings_are_shown_bare_on_one_line() -> None:
    output = {"type": "tool-output-available", "toolCallId": "c1", "output": "42\n  (exactly)"}
    assert render(output, CALC) == '⚙ calculate({"expression":"6*7"}) → 42 (exactly)'


def test_long_tool_input_and_output_are_cut_short() -> None:
    call = {**CALC, "toolName": "fetch", "input": {"url": "https://example.com/" + "a" * 300}}
    output = {"type": "tool-output-available", "toolCallId": "c1", "output": "b" * 300}
    line = render(output, call)
    shown_input = line.removeprefix("⚙ fetch(").split(") → ")[0]
    shown_output = line.split(" → ")[1]
    assert len(shown_input) == len(shown_output) == terminal_chat.TOOL_TEXT_LIMIT
    assert shown_input.endswith("…") and shown_output == "b" * 119 + "…"


def test_tool_output_of_an_unknown_call_still_shows() -> None:
    assert render({"type": "tool-output-available", "toolCallId": "c9", "output": None}) == "⚙ tool → null"


def test_tool_error_names_the_tool() -> None:
    error = {"type": "tool-output-error", "toolCallId": "c1", "errorText": "Division by zero."}
    assert render(error, CALC) == "✗ calculate: Division by zero."
    assert render(error) == "✗ tool: Division by zero."


@pytest.mark.parametrize(
    ("chunk", "shown"),
    [
        ({"type": "error", "errorText": "the model provider failed (500)"}, "! error: the model provider failed (500)"),
        ({"type": "abort", "reason": "cancelled by the user"}, "! stopped: cancelled by the user"),
        ({"type": "abort"}, "! stopped"),
        ({"type": "finish", "finishReason": "length"}, "! the reply was cut short (length)"),
    ],
)
def test_errors_and_early_ends_get_a_line(chunk: dict[str, Any], shown: str) -> None:
    assert render(chunk) == shown


# --- iter_chunks --------------------------------------------------------------------------------------------------

# A tool call and its answer as the service streamed them, with a heartbeat in the middle.
RECORDED = (
    b'id: 1795319008990-0\ndata: {"type":"start","messageId":"msg-1","messageMetadata":{"taskId":"t1"}}\n\n'
    b'id: 1795319008992-0\ndata: {"type":"start-step"}\n\n'
    b'id: 1795319009002-0\ndata: {"type":"tool-input-start","toolCallId":"c1","toolName":"calculate"}\n\n'
    b'id: 1795319009002-1\ndata: {"type":"tool-input-available","toolCallId":"c1","toolName":"calculate",'
    b'"input":{"expression":"6*7"}}\n\n'
    b": keep-alive\n\n"
    b'id: 1795319009005-0\ndata: {"type":"tool-output-available","toolCallId":"c1",'
    b'"output":{"expression":"6*7","result":42}}\n\n'
    b'id: 1795319009010-0\ndata: {"type":"finish-step"}\n\n'
    b'id: 1795319009011-0\ndata: {"type":"start-step"}\n\n'
    b'id: 1795319009058-0\ndata: {"type":"text-start","id":"text-0"}\n\n'
    b'id: 1795319009058-1\ndata: {"type":"text-delta","id":"text-0",'
    b'"delta":"caf\xc3\xa9 \xe2\x86\x92 42 \xf0\x9f\x8e\x89"}\n\n'  # 2-, 3- and 4-byte UTF-8 characters
    b'id: 1795319009061-0\ndata: {"type":"text-end","id":"text-0"}\n\n'
    b'id: 1795319009061-1\ndata: {"type":"finish-step"}\n\n'
    b'id: 1795319009061-2\ndata: {"type":"finish","finishReason":"stop"}\n\n'
    b"data: [DONE]\n\n"
)


class Body(httpx.AsyncByteStream):
    """A response body that arrives in reads of `size` bytes, cutting through frames and UTF-8 characters."""

    def __init__(self, body: bytes, size: int) -> None:
        self.body = body
        self.size = size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            yield self.body[start : start + self.size]


async def parsed(body: bytes, size: int | None = None) -> list[dict[str, Any]]:
    response = httpx.Response(200, stream=Body(body, size or len(body)))
    return [chunk async for chunk in iter_chunks(response)]


def expected_chunks(body: bytes) -> list[dict[str, Any]]:
    lines = [line for line in body.split(b"\n") if line.startswith(b"data: ") and line != b"data: [DONE]"]
    return [orjson.loads(line.removeprefix(b"data: ")) for line in lines]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, None])
async def test_iter_chunks_reads_a_recorded_stream_in_any_read_size(size: int | None) -> None:
    chunks = await parsed(RECORDED, size)
    assert chunks == expected_chunks(RECORDED)
    assert len(chunks) == 12  # no heartbeat, no [DONE]
    assert chunks[-4]["delta"] == "café → 42 🎉"


async def test_iter_chunks_follows_the_sse_field_rules() -> None:
    body = (
        b"retry: 1000\r\n: a comment\r\n\r\n"  # CRLF line ends; a frame without data is no chunk
        b'data:{"type":"text-delta",\r\ndata: "id":"t","delta":"x"}\r\n\r\n'  # no space after the colon; two lines
        b'event: message\rdata: {"type":"finish"}\r\r'  # CR line ends
        b'data: {"type":"start-step"}\n'  # the body ends inside this frame: it is dropped
    )
    assert await parsed(body, 5) == [{"type": "text-delta", "id": "t", "delta": "x"}, {"type": "finish"}]


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]"])
async def test_iter_chunks_rejects_a_malformed_chunk(data: bytes) -> None:
    with pytest.raises(ChatClientError, match="the server sent"):
        await parsed(b"data: " + data + b"\n\n")


# --- the copilot subcommands --------------------------------------------------------------------------------------


def test_cli_parses_chat() -> None:
    args = cli.build_parser().parse_args(["chat", "--url", "http://pod:9000", "--token", "T", "--session", "s-1"])
    assert (args.func, args.url, args.token, args.session) == (cli._chat, "http://pod:9000", "T", "s-1")
    defaults = cli.build_parser().parse_args(["chat"])
    assert (defaults.url, defaults.token, defaults.session) == ("http://127.0.0.1:8000", None, None)


def test_cli_chat_takes_the_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None, str | None]] = []

    def run(url: str, token: str | None, session_id: str | None) -> int:
        calls.append((url, token, session_id))
        return 0

    monkeypatch.setattr(terminal_chat, "run", run)
    monkeypatch.setenv("COPILOT_TOKEN", "from-env")
    assert cli.main(["chat"]) == 0
    assert cli.main(["chat", "--token", "flag", "--session", "s-1"]) == 0
    assert calls == [("http://127.0.0.1:8000", "from-env", None), ("http://127.0.0.1:8000", "flag", "s-1")]


def test_cli_parses_mock_llm_and_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(["mock-llm"])
    assert (args.func, args.host, args.port, args.tokens, args.delay_ms) == (cli._mock_llm, "127.0.0.1", 8001, None, 0)

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(mock_llm, "run", lambda *a, **kw: calls.append((a, kw)))
    argv = ["mock-llm", "--host", "0.0.0.0", "--port", "9001", "--tokens", "50", "--delay-ms", "2.5"]
    assert cli.main(argv) == 0
    assert calls == [(("0.0.0.0", 9001), {"default_tokens": 50, "default_delay_ms": 2.5})]


# --- against the service, with the mock model ---------------------------------------------------------------------


@pytest.fixture
async def live(chat_settings: Settings) -> AsyncIterator[LiveServer]:
    async with LiveServer(chat_settings) as server:
        yield server


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(live.url, make_token("alice")) as client:
        yield client


async def reply(http: httpx.AsyncClient, message: str) -> str:
    out = io.StringIO()
    await send(http, await create_session(http), message, out)
    return out.getvalue()


async def test_send_prints_the_reply_text(http: httpx.AsyncClient) -> None:
    assert await reply(http, '[[mock:text content="Hello there, friend"]]') == "Hello there, friend\n"


async def test_send_prints_a_tool_call_on_its_own_line(http: httpx.AsyncClient) -> None:
    first, answer, *rest = (await reply(http, CALC_MARKER)).split("\n")
    assert first == CALC_LINE
    assert answer.startswith("Here is what the tools told me. calculate returned:") and "42" in answer
    assert rest == [""]


async def test_send_prints_tool_errors_and_stream_errors(http: httpx.AsyncClient) -> None:
    tool_failed = await reply(http, '[[mock:tool name=calculate args={"expression": "1/0"}]]')
    assert tool_failed.startswith("✗ calculate: Division by zero.\nHere is what the tools told me.")
    assert await reply(http, "[[mock:server_error]]") == "! error: the model provider failed (500)\n"


async def test_http_errors_carry_the_server_message(http: httpx.AsyncClient, live: LiveServer) -> None:
    with pytest.raises(ChatClientError, match=r"^session not found \(HTTP 404\)$"):
        await send(http, str(uuid.uuid4()), "hi", io.StringIO())
    with pytest.raises(ChatClientError, match=r"^session not found \(HTTP 404\)$"):
        await check_session(http, str(uuid.uuid4()))
    with pytest.raises(ChatClientError, match=r"valid UUID.*\(HTTP 422\)$"):
        await check_session(http, "not-a-uuid")
    async with open_client(live.url, None) as anonymous:
        with pytest.raises(ChatClientError, match=r"^missing bearer token \(HTTP 401\)$"):
            await create_session(anonymous)


async def test_an_unreachable_server_is_one_error() -> None:
    async with open_client("http://127.0.0.1:9", None) as nowhere:
        with pytest.raises(ChatClientError, match="connection problem"):
            await create_session(nowhere)


class Watched(io.StringIO):
    """Output that tells when something was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str, /) -> int:
        self.written.set()
        return super().write(text)


async def stored_reply(http: httpx.AsyncClient, session_id: str) -> str:
    """The session's assistant reply, once the turn has stored it."""
    for _ in range(200):
        messages = (await http.get(f"/api/chat/sessions/{session_id}")).json()["messages"]
        if messages[-1]["role"] == "assistant":
            return str(messages[-1]["content"])
        await asyncio.sleep(0.05)
    raise AssertionError("the turn never stored its reply")


async def test_stopping_a_send_ends_the_line_and_the_server_finishes(http: httpx.AsyncClient) -> None:
    sid = await create_session(http)
    out = Watched()
    task = asyncio.create_task(send(http, sid, "[[mock:text tokens=30 delay_ms=20]]", out))
    async with asyncio.timeout(10):
        await out.written.wait()
    task.cancel()  # what Ctrl-C does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out.getvalue().endswith("\n") and len(out.getvalue().split()) < 30
    assert len((await stored_reply(http, sid)).split()) == 30


async def test_the_prompt_loop(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    typed = iter(["", '[[mock:text content="one"]]', "/new", '[[mock:text content="two"]]', "/quit", "never read"])

    def scripted_input(prompt: str = "") -> str:
        return next(typed)

    monkeypatch.setattr(builtins, "input", scripted_input)
    out = io.StringIO()
    assert await chat(live.url, make_token("alice"), out=out) == 0
    first, one, new, two = out.getvalue().splitlines()
    assert first.startswith("session ") and new.startswith("session ") and first.split()[1] != new.split()[1]
    assert (one, two) == ("one", "two")
    assert next(typed) == "never read"


async def test_the_prompt_loop_ends_at_end_of_input_and_reports_errors(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lines() -> Iterator[str]:
        yield "[[mock:server_error]]"

    typed = lines()

    def scripted_input(prompt: str = "") -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", scripted_input)
    out = io.StringIO()
    assert await chat(live.url, make_token("alice"), out=out) == 0
    assert out.getvalue().splitlines()[1:] == ["! error: the model provider failed (500)", ""]

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert await chat(live.url, make_token("alice"), session_id=str(uuid.uuid4()), out=out) == 1
    assert err.getvalue() == "! session not found (HTTP 404)\n"


async def test_a_refusal_over_a_per_user_limit_prints_the_message_and_the_wait(
    chat_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    typed = iter(['[[mock:text content="one"]]', "two"])

    def scripted_input(prompt: str = "") -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", scripted_input)
    out = io.StringIO()
    # Two requests a minute: creating the session and the first message; the second message is refused.
    async with LiveServer(chat_settings.model_copy(update={"rate_limit_requests_per_minute": 2})) as live:
        assert await chat(live.url, make_token("alice"), out=out) == 0
    _, one, refused, end = out.getvalue().splitlines()
    assert (one, end) == ("one", "")
    assert re.fullmatch(
        r"! Too many requests: at most 2 a minute\. Try again in (\d+ s|1 min)\. \(HTTP 429, retry in \1\)", refused
    ), refused


@pytest.mark.parametrize(
    ("retry_after", "shown"),
    [
        ("1", " (HTTP 429, retry in 1 s)"),
        ("3600", " (HTTP 429, retry in 1 h)"),
        ("11101", " (HTTP 429, retry in 3 h 6 min)"),
    ],
)
async def test_the_wait_of_a_refusal_is_said_as_people_say_it(retry_after: str, shown: str) -> None:
    body = {"error": {"code": "rate_limited", "message": "The daily budget is used up."}}
    response = httpx.Response(429, json=body, headers={"retry-after": retry_after})
    with pytest.raises(ChatClientError) as caught:
        await terminal_chat._raise_for_error(response)
    assert str(caught.value) == "The daily budget is used up." + shown


class InterruptedOnFirstReply(io.StringIO):
    """Output that presses Ctrl-C (a real SIGINT to this process) as soon as the first reply text is written."""

    def __init__(self) -> None:
        super().__init__()
        self.pressed = False

    def write(self, text: str, /) -> int:
        written = super().write(text)
        if not self.pressed and text.strip() and not text.startswith("session "):
            self.pressed = True
            os.kill(os.getpid(), signal.SIGINT)
        return written


async def test_ctrl_c_during_a_reply_stops_it_on_the_server_and_the_next_message_is_accepted(
    live: LiveServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    typed = iter(["[[mock:text tokens=300 delay_ms=20]]", '[[mock:text content="two"]]'])
    at_prompt_again = threading.Event()

    def scripted_input(prompt: str = "") -> str:
        try:
            return next(typed)
        except StopIteration:
            # The second Ctrl-C, at the prompt: it leaves.
            at_prompt_again.set()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", scripted_input)
    out = InterruptedOnFirstReply()
    async with asyncio.timeout(30):
        assert await chat(live.url, make_token("alice"), out=out) == 0
    assert at_prompt_again.is_set()
    lines = out.getvalue().splitlines()
    session_id = lines[0].split()[1]
    assert "(stopped; what was written so far is stored)" in lines, lines
    assert lines[-2:] == ["two", ""], lines  # not "! ... (HTTP 409)": the first reply no longer runs
    messages = (await http.get(f"/api/chat/sessions/{session_id}")).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert len(messages[1]["content"].split()) < 300  # cut short by the cancel, not finished by the server
    assert messages[3]["content"] == "two"


async def test_ctrl_c_twice_quickly_stops_the_reply_and_quits(
    live: LiveServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    typed = iter(["[[mock:text tokens=300 delay_ms=20]]", "never read"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(typed))

    class Out(InterruptedOnFirstReply):
        def write(self, text: str, /) -> int:
            written = super().write(text)
            if text.startswith("(stopping the reply"):
                # The cancel request is awaited right after this line: the second press lands while it runs.
                asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGINT)
            return written

    out = Out()
    async with asyncio.timeout(30):
        assert await chat(live.url, make_token("alice"), out=out) == 0
    assert next(typed) == "never read"  # it quit instead of prompting again
    session_id = out.getvalue().split()[1]
    assert len((await stored_reply(http, session_id)).split()) < 300  # and the reply was stopped on the server
