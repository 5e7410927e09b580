"""The model, behind a small interface: one shared `openai.AsyncOpenAI` client that yields domain events.

`stream()` retries failures (rate limit, 5xx, overloaded, connection, idle stream) but only before it has yielded
anything: after the first chunk a retry would stream the answer again, duplicating text in the UI and in storage.
SDK errors are translated into `ModelError` where they come in, once (`llm_errors`). Tool-call argument fragments are
collected by index and parsed once, when the model's stream ends; each is also passed on as it comes (once the
call's id and name are known), so what a call had received is known wherever its stream stops.

The model is reached through the SDK's client (base URL, auth headers, HTTP client, status errors) but not through
its typed `chat.completions.create`: that walks every message and tool schema of the request to transform it, and
builds a pydantic model per streamed chunk, costs that grow with the history and with the reply. We post the
request body as JSON bytes (`orjson`) and read the stream's `data:` events ourselves as plain dicts, keeping the
SDK's rules for them: `[DONE]` ends the stream, an event holding an `error` raises `openai.APIError`. A streamed
call goes out as the SDK's client builds it but over aiohttp (`llm_streams`: HTTP parsed in C, a token's read
costs a fraction of httpx's), unless a proxy stands before the model; others with `AsyncOpenAI.post`.

Two wires speak to the model: Chat Completions (`POST /chat/completions`, here) and the Responses API
(`POST /responses`, `llm_responses`), chosen by `api`. Both give the same events and go through the same retry
rules, so the turn engine does not know which one it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx2
import openai
import orjson

from backend.chat.llm_ahead import CallAhead
from backend.chat.llm_errors import CLIENT_ERRORS, translate
from backend.chat.llm_events import (
    Completed,
    ModelEvent,
    PartialCall,
    ReasoningChunk,
    TextChunk,
    ToolArgumentsDelta,
    ToolCall,
    ToolCallHeader,
    Usage,
    finish_call,
)
from backend.chat.llm_http import model_http_client
from backend.chat.llm_response_state import ResponseChains
from backend.chat.llm_responses import ResponsesWire
from backend.chat.llm_sse import sse_data
from backend.chat.llm_streams import ModelStreams, StreamedReply
from backend.chat.watchdogs import ReadDeadline
from backend.errors import ModelError

__all__ = [
    "CallObserver",
    "Completed",
    "LLMClient",
    "ModelApi",
    "ModelEvent",
    "ReasoningChunk",
    "RetryPolicy",
    "TextChunk",
    "ToolArgumentsDelta",
    "ToolCall",
    "ToolCallHeader",
    "Usage",
]

log = logging.getLogger("copilot.llm")

ModelApi = Literal["chat_completions", "responses"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    base_seconds: float = 0.5
    max_seconds: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.max_seconds, self.base_seconds * 2**attempt)
        wait = max(backoff * random.uniform(0.8, 1.2), retry_after or 0.0)
        return float(min(wait, self.max_seconds))


class CallObserver(Protocol):
    """Hears how every model call went (metrics): called inline, so it must be cheap and must not raise."""

    def succeeded(self, model: str, seconds: float) -> None:
        """A call ended well after `seconds` (its retries included)."""

    def failed(self, model: str, code: str | None, *, retrying: bool) -> None:
        """An attempt failed with the provider's error `code`; `retrying`: another attempt follows."""

    def used(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """The provider reported the usage of an attempt."""


class _Unobserved:
    def succeeded(self, model: str, seconds: float) -> None:
        pass

    def failed(self, model: str, code: str | None, *, retrying: bool) -> None:
        pass

    def used(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        pass


class LLMClient:
    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        model: str,
        retry: RetryPolicy,
        idle_timeout: float,
        on_usage: Callable[[Usage], None] | None = None,
        observer: CallObserver | None = None,
        api: ModelApi = "chat_completions",
        reasoning_summary: str | None = None,
        response_chains: ResponseChains | None = None,
    ) -> None:
        """`api` is the wire the model speaks (`chat_completions` or `responses`); `reasoning_summary` asks a
        reasoning model for summaries over the Responses API (`auto`, `concise`, `detailed`). `on_usage` hears the
        provider's usage of every call that reported one (streamed turns, titles, summaries, each attempt of a
        retried call), at the end of the call; it must not block. `observer` hears every call's outcome, each failed
        attempt and each usage (metrics). `response_chains` (Responses API only) links each session's calls through
        the provider's stored responses (`previous_response_id`); without it every call sends the whole input."""
        # Our retry policy knows what was already streamed; the SDK's would not, so it is off.
        http = model_http_client()
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", max_retries=0, http_client=http
        )
        self._streams = ModelStreams(self._client, http, connect_timeout=_STREAMING.connect)
        self.model = model
        self._retry = retry
        self._idle_timeout = idle_timeout
        self._on_usage = on_usage
        self._observer: CallObserver = observer or _Unobserved()
        self._wire: _Wire = ResponsesWire(reasoning_summary=reasoning_summary) if api == "responses" else _ChatWire()
        self.api: ModelApi = api
        self._chains = response_chains if api == "responses" else None

    async def close(self) -> None:
        await self._streams.close()
        await self._client.close()

    def send_ahead(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()) -> CallAhead | None:
        """Send the streamed call for `messages` and `tools` now, for a `stream()` of the same call to take up
        (`ahead=`). None where a call's body is not known in advance (the Responses API's chained state)."""
        if self._chains is not None:
            return None
        content = _content(self._wire.stream_body(self.model, messages, tools))
        return CallAhead.send(content, self._open_content(content))

    async def stream(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] = (),
        *,
        ahead: CallAhead | None = None,
    ) -> AsyncIterator[ModelEvent]:
        """One model call as events: text chunks, tool-call starts and argument fragments, then `Completed`.
        Raises `ModelError`. `ahead`: the same call sent already (`send_ahead`); its first attempt takes it up if
        its body is the same bytes, else discards it."""
        attempt = 0
        started = time.monotonic()
        while True:
            produced = False
            try:
                async for event in self._attempt(messages, tools, ahead if attempt == 0 else None):
                    produced = True
                    yield event
                self._observer.succeeded(self.model, time.monotonic() - started)
                return
            except ModelError as e:
                retrying = not produced and e.retryable and attempt < self._retry.max_retries
                self._observer.failed(self.model, e.provider_code, retrying=retrying)
                if not retrying:
                    raise
                delay = self._retry.delay(attempt, e.retry_after)
                log.warning("model call failed (%s); retry %d in %.2fs", e.message, attempt + 1, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def complete(
        self, messages: Sequence[dict[str, Any]], *, model: str | None = None, max_tokens: int = 64
    ) -> str:
        """A short non-streaming completion (titles, summaries)."""
        model = model or self.model
        body = self._wire.complete_body(model, messages, max_tokens)
        started = time.monotonic()
        try:
            response = await self._post(orjson.dumps(body), stream=False)
            completion = orjson.loads(response.content)
        except CLIENT_ERRORS as e:
            raise self._failed(model, translate(e)) from e
        except orjson.JSONDecodeError as e:
            malformed = ModelError("the model sent a malformed response", provider_code="malformed_response")
            raise self._failed(model, malformed) from e
        self._observer.succeeded(model, time.monotonic() - started)
        text, usage = self._wire.complete_result(completion)
        self._report(usage, model)
        return text

    async def _post(self, content: bytes, *, stream: bool) -> httpx2.Response:
        """POST to the wire's path through the SDK's client: its base URL, auth, headers and status errors (4xx and
        5xx raise `openai.APIStatusError`), without its request transform. Streamed responses must be closed."""
        response: httpx2.Response = await self._client.post(
            self._wire.path,
            cast_to=httpx2.Response,
            content=content,
            options={"security": {"bearer_auth": True}, "timeout": _STREAMING if stream else openai.DEFAULT_TIMEOUT},
            stream=stream,
        )
        return response

    async def _open_stream(self, body: dict[str, Any], ahead: CallAhead | None = None) -> StreamedReply:
        """POST a streamed call (`llm_streams`: over aiohttp unless a proxy applies), or take up the same call sent
        ahead; the reply's head is in."""
        content = _content(body)
        opening = ahead.take(content) if ahead is not None else None
        if opening is not None:
            return await opening
        return await self._open_content(content)

    async def _open_content(self, content: bytes) -> StreamedReply:
        return await self._streams.open(self._wire.path, content, sdk_post=lambda: self._post(content, stream=True))

    def _attempt(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], ahead: CallAhead | None
    ) -> AsyncIterator[ModelEvent]:
        body = self._wire.stream_body(self.model, messages, tools)
        if self._chains is None:
            return self._stream_body(body, ahead)
        return self._chains.stream(body, self._stream_body)

    async def _stream_body(self, body: dict[str, Any], ahead: CallAhead | None = None) -> AsyncIterator[ModelEvent]:
        try:
            async with asyncio.timeout(self._idle_timeout):
                streamed = await self._open_stream(body, ahead)
            try:
                reply = self._wire.reader(streamed.request)
                async with contextlib.aclosing(sse_data(streamed)) as events:
                    # One timer per idle period rather than one per chunk; time spent by our caller between
                    # chunks does not count as the model's silence.
                    with ReadDeadline(self._idle_timeout) as deadline:
                        while True:
                            deadline.start()
                            try:
                                data = await anext(events)
                            except StopAsyncIteration:
                                break
                            finally:
                                deadline.stop()
                            for event in reply.read(data):
                                yield event
            finally:
                await streamed.close()
        except TimeoutError as e:
            raise ModelError(
                f"the model sent nothing for {self._idle_timeout:g}s", retryable=True, provider_code="idle_timeout"
            ) from e
        except CLIENT_ERRORS as e:
            raise translate(e) from e
        self._report(reply.usage, self.model)
        yield reply.completed()

    def _failed(self, model: str, error: ModelError) -> ModelError:
        self._observer.failed(model, error.provider_code, retrying=False)
        return error

    def _report(self, usage: Usage | None, model: str) -> None:
        if usage is None:
            return
        self._observer.used(model, usage.prompt_tokens, usage.completion_tokens)
        if self._on_usage is None:
            return
        try:
            self._on_usage(usage)
        except Exception:
            log.exception("the usage hook failed")


_STREAMING = httpx2.Timeout(
    connect=openai.DEFAULT_TIMEOUT.connect,
    read=None,
    write=openai.DEFAULT_TIMEOUT.write,
    pool=openai.DEFAULT_TIMEOUT.pool,
)
"""The SDK's timeouts without the one per read: a streamed reply's reads would each arm and cancel a timer. Its
silences are bounded by `idle_timeout` instead: until the response's head in `_stream_body`, then between chunks."""


class _Reader(Protocol):
    """What the events of one streamed reply said so far."""

    usage: Usage | None

    def read(self, data: bytes) -> list[ModelEvent]:
        """Take in one event's `data`; the events it gives. Raises `ModelError` or `openai.APIError`."""

    def completed(self) -> Completed:
        """The end of a stream that ended normally. Raises `ModelError` for one cut short."""


class _Wire(Protocol):
    """One API of the model: its path, its request bodies and how its replies read."""

    path: str

    def stream_body(
        self, model: str, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> dict[str, Any]: ...

    def complete_body(self, model: str, messages: Sequence[dict[str, Any]], max_tokens: int) -> dict[str, Any]: ...

    def complete_result(self, response: Any) -> tuple[str, Usage | None]: ...

    def reader(self, request: httpx2.Request) -> _Reader: ...


class _ChatWire:
    """Chat Completions: `POST /chat/completions`, the messages and tool schemas as they are."""

    path = "/chat/completions"

    def stream_body(
        self, model: str, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = list(tools)
        return body

    def complete_body(self, model: str, messages: Sequence[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return {"model": model, "messages": list(messages), "max_tokens": max_tokens}

    def complete_result(self, response: Any) -> tuple[str, Usage | None]:
        if not isinstance(response, dict):
            return "", None
        usage = _usage(response.get("usage"))
        choices = response.get("choices")
        if not choices or not isinstance(choices[0], dict):
            return "", usage
        message = choices[0].get("message")
        return (message.get("content") if isinstance(message, dict) else None) or "", usage

    def reader(self, request: httpx2.Request) -> _Reply:
        return _Reply(request)


class _Reply:
    """What the chunks of one streamed reply said so far: tool calls by index, finish reason, usage. Reasoning
    deltas are passed on as they come."""

    __slots__ = ("_request", "calls", "finish_reason", "usage")

    def __init__(self, request: httpx2.Request) -> None:
        self._request = request
        self.calls: dict[int, PartialCall] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def read(self, data: bytes) -> list[ModelEvent]:
        """Take in one `chat.completion.chunk`; the events it gives (reasoning, text, tool calls whose id and name
        are known)."""
        chunk = _chunk(data, self._request)
        events: list[ModelEvent] = []
        usage = _usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or _EMPTY
            # DeepSeek and vLLM name it `reasoning_content`, OpenRouter `reasoning`; a delta carries one of them.
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                events.append(ReasoningChunk(reasoning))
            text = delta.get("content")
            if text:
                events.append(TextChunk(text))
            for tc in delta.get("tool_calls") or ():
                partial = self.calls.setdefault(tc.get("index", 0), PartialCall())
                function = tc.get("function") or _EMPTY
                if tc.get("id"):
                    partial.id = tc["id"]
                if function.get("name"):
                    partial.name += function["name"]
                fragment = function.get("arguments")
                if fragment:
                    partial.arguments.append(fragment)
                    if partial.announced:
                        events.append(ToolArgumentsDelta(partial.id, fragment))
                if not partial.announced and partial.id and partial.name:
                    partial.announced = True
                    events.append(ToolCallHeader(partial.id, partial.name))
                    if partial.arguments:
                        events.append(ToolArgumentsDelta(partial.id, "".join(partial.arguments)))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def completed(self) -> Completed:
        """The end of a stream that ended normally; a stream that never said why it finished was cut short."""
        if self.finish_reason is None:
            raise ModelError("the model's stream ended before it finished", retryable=True, provider_code="truncated")
        calls = [finish_call(i, p) for i, p in sorted(self.calls.items())]
        return Completed(self.finish_reason, calls, self.usage)


_EMPTY: dict[str, Any] = {}


def _usage(value: Any) -> Usage | None:
    """A response's or chunk's `usage` object, if it has one (its details objects are optional)."""
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens_details")
    completion = value.get("completion_tokens_details")
    return Usage(
        _count(value.get("prompt_tokens")),
        _count(value.get("completion_tokens")),
        _count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0,
        _count(completion.get("reasoning_tokens")) if isinstance(completion, dict) else 0,
    )


def _count(value: Any) -> int:
    """A token count as the provider sent it; anything but a non-negative integer counts as 0."""
    return value if type(value) is int and value > 0 else 0


def _chunk(data: bytes, request: httpx2.Request) -> dict[str, Any]:
    """One `chat.completion.chunk` as a dict. An `error` event raises `openai.APIError`, as the SDK's stream does."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ModelError(
            "the model sent a malformed stream event", retryable=True, provider_code="malformed_stream"
        ) from e
    if not isinstance(chunk, dict):
        raise ModelError("the model sent a malformed stream event", retryable=True, provider_code="malformed_stream")
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        raise openai.APIError(message, request, body=error)
    return chunk


def _content(body: dict[str, Any]) -> bytes:
    # orjson (3.13) returns its write buffer, ~10x the body's size, as the bytes; the request keeps the body for as
    # long as the reply streams. `%` copies it into bytes of its own size.
    return b"%b" % orjson.dumps(body)
