"""The mock model's side of the OpenAI wire: a ``Plan`` turned into bytes and sent as the plan says.

A ``Plan`` says what one completion contains (text tokens, tool calls) and how it is delivered
(pace, cut, stall). This module encodes it as ``chat.completion.chunk`` SSE or as a
``chat.completion`` body, encodes errors in OpenAI's JSON shape, and sends chunks with
``ChunkStream``. Text is JSON-encoded once, when it is planned, so that streaming a token costs one
bytes join: this is the hot path of the 1000-stream benchmarks.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

_TOKEN = re.compile(r"\s*\S+|\s+")
_DELTA_SLOT = "@@delta@@"
_DONE = b"data: [DONE]\n\n"
CONTENT_END = b"\0content-end"
"""Marks, in a stream's chunks, where the content ends (known by identity, never sent): the pace applies up to it,
and what closes the stream (the finish reason, usage, ``[DONE]``) follows the last token at once, as a provider
sends it. Pacing those too made every reply a few token intervals longer than its content."""
_FILLER = tuple(orjson.dumps(f" {w}") for w in ("ipsum", "dolor", "sit", "amet", "consectetur", "elit", "lorem"))


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class StreamError:
    """An error sent inside the stream after ``after`` events, ending it."""

    after: int
    code: str
    message: str
    event: str = "error"
    """Responses API only: ``error`` (an ``error`` event) or ``failed`` (``response.failed``)."""


@dataclass
class Plan:
    """What one completion contains and how it is delivered; scenarios fill it in."""

    delay: float
    """Seconds between chunks, up to the last one with content."""
    paced: bool = False
    """A marker set `delay`: a non-streamed answer then arrives as late as the end of its stream would."""
    content: list[bytes] = field(default_factory=list)
    """Text tokens, each already encoded as a JSON string literal."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    cut_after: int | None = None
    """Drop the connection after this many chunks."""
    stall_after: int | None = None
    """Go silent for ``stall_seconds`` after this many chunks."""
    stall_seconds: float = 0.0
    answered: bool = False
    """Whether a ``text`` or ``tool`` marker chose the reply (which may then be empty)."""
    reasoning: list[bytes] = field(default_factory=list)
    """Reasoning tokens streamed before the reply, each already encoded as a JSON string literal."""
    reasoning_field: str = "reasoning_content"
    """The delta field that carries them: ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning`` (OpenRouter)."""
    cached_tokens: int = 0
    """Prompt tokens reported as served from the provider's cache."""
    stream_error: StreamError | None = None
    """An error event that cuts the stream."""
    incomplete_reason: str | None = None
    """Responses API only: end with ``response.incomplete`` for this reason instead of ``response.completed``."""

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def error_response(
    status: int,
    message: str,
    type_: str | None,
    code: str | None = None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in OpenAI's JSON shape; the SDK picks its exception class from the status."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def encode_text(text: str) -> list[bytes]:
    """``text`` split into word tokens (each with its leading space), JSON-encoded."""
    return [orjson.dumps(token) for token in _TOKEN.findall(text)]


def filler(count: int) -> list[bytes]:
    """``count`` filler tokens from a pre-encoded cycle, so long benchmark replies encode nothing."""
    return list(itertools.islice(itertools.cycle(_FILLER), max(count, 0)))


class Envelope:
    """Pre-encoded pieces of one completion's chunks, so a text token costs one bytes join."""

    def __init__(self, completion_id: str, model: str) -> None:
        self.id = completion_id
        self.model = model
        self.created = int(time.time())
        chunk = self.chunk([{"index": 0, "delta": _DELTA_SLOT, "logprobs": None, "finish_reason": None}])
        # rsplit: the model name comes first and may contain anything, even the slot text.
        head, tail = chunk.rsplit(orjson.dumps(_DELTA_SLOT), 1)
        self._head, self._tail = head, tail
        self._text_head, self._text_tail = head + b'{"content":', b"}" + tail

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def delta(self, delta: dict[str, Any]) -> bytes:
        return b"".join((self._head, orjson.dumps(delta), self._tail))

    def text(self, token: bytes) -> bytes:
        return b"".join((self._text_head, token, self._text_tail))


def fragments(arguments: str) -> list[str]:
    """Tool arguments cut into pieces of up to 8 characters, at least two when possible."""
    size = max(1, min(8, len(arguments) // 2))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _tool_call_deltas(calls: list[ToolCall]) -> Iterator[dict[str, Any]]:
    """Each call's header (index, id, name), then argument fragments interleaved across indexes."""
    for index, call in enumerate(calls):
        function = {"name": call.name, "arguments": ""}
        yield {"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": function}]}
    for pieces in itertools.zip_longest(*(fragments(call.arguments) for call in calls)):
        for index, piece in enumerate(pieces):
            if piece is not None:
                yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


def token_usage(prompt_tokens: int, plan: Plan) -> dict[str, Any]:
    """OpenAI's ``usage`` object; the details objects only when the plan has cached or reasoning tokens."""
    reasoning = len(plan.reasoning)
    completion = reasoning + len(plan.content) + sum(len(fragments(call.arguments)) for call in plan.tool_calls)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    if plan.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": min(plan.cached_tokens, prompt_tokens)}
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def sse_chunks(plan: Plan, env: Envelope, usage: dict[str, Any] | None) -> Iterator[bytes]:
    """The whole stream: role, reasoning tokens, text tokens, tool-call deltas, finish, optional usage, ``[DONE]``."""
    yield env.delta({"role": "assistant", "content": None if plan.tool_calls and not plan.content else ""})
    for token in plan.reasoning:
        yield env.delta({plan.reasoning_field: orjson.loads(token)})
    for token in plan.content:
        yield env.text(token)
    for delta in _tool_call_deltas(plan.tool_calls):
        yield env.delta(delta)
    yield CONTENT_END
    yield env.chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": plan.finish_reason}])
    if usage is not None:
        yield env.chunk([], usage)
    yield _DONE


def fail_after(
    events: Iterator[bytes], error: StreamError | None, encode: Callable[[StreamError], bytes]
) -> Iterator[bytes]:
    """``events`` up to ``error.after`` of them, then the error event (and nothing more); all of them without one."""
    if error is None:
        yield from events
        return
    sent = 0
    for event in events:
        if sent == error.after:
            break
        yield event
        sent += event is not CONTENT_END
    yield encode(error)


def stream_error_chunk(error: StreamError) -> bytes:
    """A chat completions stream's error event: an object holding ``error``, as OpenAI and gateways send it."""
    body = {"error": {"message": error.message, "type": None, "param": None, "code": error.code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def completion_body(plan: Plan, env: Envelope, usage: dict[str, Any]) -> bytes:
    """The non-streaming ``chat.completion`` body."""
    content = "".join(orjson.loads(b"[" + b",".join(plan.content) + b"]")) if plan.content else None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if plan.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in plan.tool_calls
        ]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
    body = {
        "id": env.id,
        "object": "chat.completion",
        "created": env.created,
        "model": env.model,
        "choices": [choice],
        "usage": usage,
    }
    return orjson.dumps(body)


def json_reply(completion: bytes, plan: Plan, headers: Mapping[str, str]) -> Response:
    """The non-streaming reply; a cut or stall lands in the middle of its JSON body."""
    if plan.cut_after is None and plan.stall_after is None:
        return Response(completion, headers=headers, media_type="application/json")
    halves = (completion[: len(completion) // 2], completion[len(completion) // 2 :])
    faults = replace(
        plan,
        delay=0.0,
        cut_after=None if plan.cut_after is None else 1,
        stall_after=None if plan.stall_after is None else 1,
    )
    return ChunkStream(halves, faults, headers, "application/json")


class StreamCut(Exception):
    """Raised after the response has started: the ASGI server then drops the connection."""


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ChunkStream(Response):
    """Sends pre-encoded chunks, one write each, paced and faulted by the plan.

    It stops as soon as the client goes away, in the middle of a stall too, so that abandoned
    benchmark streams and timed-out stall tests cost nothing more.
    """

    def __init__(self, chunks: Iterable[bytes], plan: Plan, headers: Mapping[str, str], media_type: str) -> None:
        self.chunks = chunks
        self.plan = plan
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await self._send_chunks(send, gone)
        finally:
            gone.cancel()

    async def _send_chunks(self, send: Send, gone: asyncio.Future[None]) -> None:
        plan = self.plan
        delay = plan.delay
        sent = 0
        for chunk in self.chunks:
            if chunk is CONTENT_END:
                delay = 0.0
                continue
            if sent == plan.cut_after:
                raise StreamCut
            if sent == plan.stall_after:
                await asyncio.wait([gone], timeout=plan.stall_seconds)
            elif sent and delay:
                await asyncio.sleep(delay)
            if gone.done():
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})
