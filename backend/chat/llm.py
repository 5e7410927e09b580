"""The model, behind a small interface: one shared `openai.AsyncOpenAI` client that yields domain events.

`stream()` retries failures (rate limit, 5xx, overloaded, connection, idle stream) but only before it has yielded
anything: after the first chunk a retry would stream the answer again, duplicating text in the UI and in storage.
SDK errors are translated into `ModelError` here, once, where they come in. Tool-call argument fragments are
collected by index and parsed once, when the model's stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2
import openai
import orjson
from openai.types.chat import ChatCompletionChunk

from backend.errors import ModelError

log = logging.getLogger("copilot.llm")


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """The model began a tool call: its id and name are known, its arguments are still streaming."""

    id: str
    name: str


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


@dataclass(frozen=True, slots=True)
class Completed:
    """The model's stream ended normally."""

    finish_reason: str
    tool_calls: list[ToolCall]
    usage: Usage | None


ModelEvent = TextChunk | ToolCallStarted | Completed


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


class LLMClient:
    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        model: str,
        retry: RetryPolicy,
        idle_timeout: float,
    ) -> None:
        # Our retry policy knows what was already streamed; the SDK's would not, so it is off.
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0)
        self.model = model
        self._retry = retry
        self._idle_timeout = idle_timeout

    async def close(self) -> None:
        await self._client.close()

    async def stream(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[ModelEvent]:
        """One model call as events: text chunks, tool-call starts, then `Completed`. Raises `ModelError`."""
        attempt = 0
        while True:
            produced = False
            try:
                async for event in self._stream_once(messages, tools):
                    produced = True
                    yield event
                return
            except ModelError as e:
                if produced or not e.retryable or attempt >= self._retry.max_retries:
                    raise
                delay = self._retry.delay(attempt, e.retry_after)
                log.warning("model call failed (%s); retry %d in %.2fs", e.message, attempt + 1, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def complete(
        self, messages: Sequence[dict[str, Any]], *, model: str | None = None, max_tokens: int = 64
    ) -> str:
        """A short non-streaming completion (titles, summaries)."""
        try:
            response = await self._client.chat.completions.create(
                model=model or self.model,
                messages=cast(Any, list(messages)),
                max_tokens=max_tokens,
            )
        except (openai.OpenAIError, httpx2.HTTPError) as e:
            raise _translate(e) from e
        return response.choices[0].message.content or "" if response.choices else ""

    async def _stream_once(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        kwargs: dict[str, Any] = {"tools": list(tools)} if tools else {}
        calls: dict[int, _PartialCall] = {}
        finish_reason: str | None = None
        usage: Usage | None = None
        try:
            async with asyncio.timeout(self._idle_timeout):
                # The SDK's message and tool TypedDicts are not worth restating for dicts we build ourselves.
                create: Any = self._client.chat.completions.create
                stream: openai.AsyncStream[ChatCompletionChunk] = await create(
                    model=self.model,
                    messages=list(messages),
                    stream=True,
                    stream_options={"include_usage": True},
                    **kwargs,
                )
            try:
                chunks = aiter(stream)
                while True:
                    try:
                        async with asyncio.timeout(self._idle_timeout):
                            chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
                    for choice in chunk.choices:
                        delta = choice.delta
                        if delta.content:
                            yield TextChunk(delta.content)
                        for tc in delta.tool_calls or ():
                            partial = calls.setdefault(tc.index, _PartialCall())
                            if tc.id:
                                partial.id = tc.id
                            if tc.function and tc.function.name:
                                partial.name += tc.function.name
                            if tc.function and tc.function.arguments:
                                partial.arguments.append(tc.function.arguments)
                            if not partial.announced and partial.id and partial.name:
                                partial.announced = True
                                yield ToolCallStarted(partial.id, partial.name)
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
            finally:
                await stream.close()
        except TimeoutError as e:
            raise ModelError(
                f"the model sent nothing for {self._idle_timeout:g}s", retryable=True, provider_code="idle_timeout"
            ) from e
        except (openai.OpenAIError, httpx2.HTTPError) as e:
            raise _translate(e) from e
        if finish_reason is None:
            raise ModelError("the model's stream ended before it finished", retryable=True, provider_code="truncated")
        yield Completed(finish_reason, [_finish_call(i, p) for i, p in sorted(calls.items())], usage)


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
    if isinstance(e, openai.APITimeoutError | openai.APIConnectionError | httpx2.HTTPError):
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
