"""The model, behind a small interface: one shared `openai.AsyncOpenAI` client that yields domain events.

`stream()` retries failures (rate limit, 5xx, overloaded, connection, idle stream) but only before it has yielded
anything: after the first chunk a retry would stream the answer again, duplicating text in the UI and in storage.
SDK errors are translated into `ModelError` here, once, where they come in. Tool-call argument fragments are
collected by index and parsed once, when the model's stream ends; each is also passed on as it comes (once the
call's id and name are known), so what a call had received is known wherever its stream stops.

The model is reached through the SDK's client (base URL, auth headers, HTTP client, status errors) but not through
its typed `chat.completions.create`: that walks every message and tool schema of the request to transform it, and
builds a pydantic model per streamed chunk, costs that grow with the history and with the reply. We post the
request body as JSON bytes (`orjson`) with `AsyncOpenAI.post` and read the stream's `data:` events ourselves as
plain dicts, keeping the SDK's rules for them: `[DONE]` ends the stream, an event holding an `error` raises
`openai.APIError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import httpx2
import openai
import orjson

from backend.errors import ModelError

log = logging.getLogger("copilot.llm")


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningChunk:
    """Reasoning the provider streams beside the answer (`reasoning_content` or `reasoning` deltas)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallHeader:
    """The model began a tool call: its id and name are known, its arguments are still streaming."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolArgumentsDelta:
    """More of a started call's raw argument text (fragments before the start come with it, joined)."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str
    """The raw argument text the model produced."""
    arguments: dict[str, Any] | None
    """Parsed arguments; None when `arguments_json` is not a JSON object (see `parse_error`)."""
    parse_error: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens the provider served from its cache (`prompt_tokens_details.cached_tokens`); part of
    `prompt_tokens`."""
    reasoning_tokens: int = 0
    """Completion tokens spent on reasoning (`completion_tokens_details.reasoning_tokens`); part of
    `completion_tokens`."""


@dataclass(frozen=True, slots=True)
class Completed:
    """The model's stream ended normally."""

    finish_reason: str
    tool_calls: list[ToolCall]
    usage: Usage | None


ModelEvent = TextChunk | ReasoningChunk | ToolCallHeader | ToolArgumentsDelta | Completed


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    announced: bool = False


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
    ) -> None:
        """`on_usage` hears the provider's usage of every call that reported one (streamed turns, titles,
        summaries, each attempt of a retried call), at the end of the call; it must not block. `observer` hears
        every call's outcome, each failed attempt and each usage (metrics)."""
        # Our retry policy knows what was already streamed; the SDK's would not, so it is off.
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0)
        self.model = model
        self._retry = retry
        self._idle_timeout = idle_timeout
        self._on_usage = on_usage
        self._observer: CallObserver = observer or _Unobserved()

    async def close(self) -> None:
        await self._client.close()

    async def stream(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[ModelEvent]:
        """One model call as events: text chunks, tool-call starts and argument fragments, then `Completed`.
        Raises `ModelError`."""
        attempt = 0
        started = time.monotonic()
        while True:
            produced = False
            try:
                async for event in self._stream_once(messages, tools):
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
        body = {"model": model, "messages": list(messages), "max_tokens": max_tokens}
        started = time.monotonic()
        try:
            response = await self._post(body, stream=False)
            completion = orjson.loads(response.content)
        except _CLIENT_ERRORS as e:
            raise self._failed(model, _translate(e)) from e
        except orjson.JSONDecodeError as e:
            malformed = ModelError("the model sent a malformed response", provider_code="malformed_response")
            raise self._failed(model, malformed) from e
        self._observer.succeeded(model, time.monotonic() - started)
        if isinstance(completion, dict):
            self._report(_usage(completion.get("usage")), model)
        choices = completion.get("choices") if isinstance(completion, dict) else None
        if not choices or not isinstance(choices[0], dict):
            return ""
        message = choices[0].get("message")
        return (message.get("content") if isinstance(message, dict) else None) or ""

    async def _post(self, body: dict[str, Any], *, stream: bool) -> httpx2.Response:
        """POST /chat/completions through the SDK's client: its base URL, auth, headers and status errors (4xx and
        5xx raise `openai.APIStatusError`), without its request transform. Streamed responses must be closed."""
        response: httpx2.Response = await self._client.post(
            "/chat/completions",
            cast_to=httpx2.Response,
            content=orjson.dumps(body),
            options={"security": {"bearer_auth": True}},
            stream=stream,
        )
        return response

    async def _stream_once(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = list(tools)
        reply = _Reply()
        try:
            async with asyncio.timeout(self._idle_timeout):
                response = await self._post(body, stream=True)
            try:
                async with contextlib.aclosing(_sse_data(response)) as events:
                    while True:
                        try:
                            async with asyncio.timeout(self._idle_timeout):
                                data = await anext(events)
                        except StopAsyncIteration:
                            break
                        for event in reply.read(_chunk(data, response)):
                            yield event
            finally:
                await response.aclose()
        except TimeoutError as e:
            raise ModelError(
                f"the model sent nothing for {self._idle_timeout:g}s", retryable=True, provider_code="idle_timeout"
            ) from e
        except _CLIENT_ERRORS as e:
            raise _translate(e) from e
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


class _Reply:
    """What the chunks of one streamed reply said so far: tool calls by index, finish reason, usage. Reasoning
    deltas are passed on as they come."""

    __slots__ = ("calls", "finish_reason", "usage")

    def __init__(self) -> None:
        self.calls: dict[int, _PartialCall] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def read(self, chunk: dict[str, Any]) -> list[ModelEvent]:
        """Take in one `chat.completion.chunk`; the events it gives (reasoning, text, tool calls whose id and name
        are known)."""
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
                partial = self.calls.setdefault(tc.get("index", 0), _PartialCall())
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
        calls = [_finish_call(i, p) for i, p in sorted(self.calls.items())]
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


_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx2.HTTPError, ssl.SSLError, anyio.EndOfStream)
"""What reading a response can raise for a broken connection (the SDK reports these as `APIConnectionError`)."""

_CLIENT_ERRORS: tuple[type[Exception], ...] = (openai.OpenAIError, *_TRANSPORT_ERRORS)

_DRAIN_SECONDS = 0.1


async def _sse_data(response: httpx2.Response) -> AsyncGenerator[bytes, None]:
    """The `data` of each server-sent event of `response`, up to `[DONE]`.

    Lines end in LF, CRLF or CR; an event ends at a blank line; its `data:` lines are joined with LF. Other fields
    (`event`, `id`, `retry`) and comments are ignored, as the SDK ignores them for chat completions.
    """
    chunks = response.aiter_bytes()
    data: list[bytes] = []
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk).splitlines(keepends=True) if pending else chunk.splitlines(keepends=True)
        # An unterminated last line, or one ending in CR (maybe the first half of a CRLF), waits for more bytes.
        pending = lines.pop() if lines and lines[-1][-1:] != b"\n" else b""
        for line in lines:
            if line in (b"\n", b"\r\n", b"\r"):
                if data:
                    event = data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
                    if event.startswith(b"[DONE]"):
                        await _drain(response, chunks)
                        return
                    yield event
            elif line.startswith(b"data:"):
                value = line[5:].rstrip(b"\r\n")
                data.append(value[1:] if value.startswith(b" ") else value)
    # An event not ended by a blank line when the body ends is incomplete: dropped, as the SSE spec says.


async def _drain(response: httpx2.Response, chunks: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]`, normally only the end of the body, so that an HTTP/1.1 connection goes back to
    the pool instead of being closed. Bounded: a server that keeps the body open after `[DONE]` costs 0.1 s."""
    if response.http_version != "HTTP/1.1":
        return
    with contextlib.suppress(TimeoutError, *_TRANSPORT_ERRORS):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in chunks:
                pass


def _chunk(data: bytes, response: httpx2.Response) -> dict[str, Any]:
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
        raise openai.APIError(message, response.request, body=error)
    return chunk


def _finish_call(index: int, partial: _PartialCall) -> ToolCall:
    raw = "".join(partial.arguments)
    call_id = partial.id or f"call_{index}"
    try:
        parsed = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as e:
        return ToolCall(call_id, partial.name, raw, None, f"arguments are not valid JSON: {e}")
    if not isinstance(parsed, dict):
        return ToolCall(call_id, partial.name, raw, None, "arguments are not a JSON object")
    return ToolCall(call_id, partial.name, raw, parsed)


_REGION_BLOCKED = "unsupported_country_region_territory"


def _translate(e: Exception) -> ModelError:
    """Map an SDK or transport error to a `ModelError` with a message fit for the user."""
    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError, *_TRANSPORT_ERRORS)):
        return ModelError("could not reach the model provider", retryable=True, provider_code="connection_error")
    if isinstance(e, openai.APIStatusError):
        code = _error_code(e)
        retry_after = _retry_after(e.response)
        if code == _REGION_BLOCKED:
            return ModelError(
                "The model provider is not available in your country or region.",
                provider_code=_REGION_BLOCKED,
            )
        if e.status_code == 429:
            return ModelError(
                "the model provider is rate limiting requests",
                retryable=True,
                provider_code=code or "rate_limited",
                retry_after=retry_after,
            )
        if e.status_code >= 500 or "overloaded" in str(e).lower():
            return ModelError(
                f"the model provider failed ({e.status_code})",
                retryable=True,
                provider_code=code or "server_error",
                retry_after=retry_after,
            )
        if code == "context_length_exceeded":
            return ModelError("the conversation is too long for the model", provider_code=code)
        return ModelError(f"the model provider refused the request ({e.status_code})", provider_code=code)
    return ModelError(f"model call failed: {type(e).__name__}")


def _error_code(e: openai.APIStatusError) -> str | None:
    code = getattr(e, "code", None)
    if isinstance(code, str):
        return code
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    return None


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
