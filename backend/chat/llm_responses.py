"""The OpenAI Responses API (`POST /responses`) as a wire of `LLMClient`: the chat-format history and tool schemas
turned into Responses input items and tools, and the streamed events read into the same model events a chat
completion's chunks give, so the turn engine cannot tell which API the model speaks.

The history stays in chat format everywhere else (storage, compaction, token counts); it is converted here, per
call: a system or user message becomes an input message, an assistant message its text as an input message and
each of its tool calls a `function_call` item, a `tool` message a `function_call_output` item. Calls are
stateless (`store: false`, the whole input each time), as with Chat Completions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx2
import orjson

from backend.chat.llm_errors import classify, shape_of
from backend.chat.llm_events import (
    Completed,
    ModelEvent,
    PartialCall,
    ReasoningChunk,
    TextChunk,
    ToolArgumentsDelta,
    ToolCallHeader,
    Usage,
    finish_call,
)
from backend.errors import ModelError

_MIN_OUTPUT_TOKENS = 16
"""OpenAI refuses a smaller `max_output_tokens`."""


class ResponsesWire:
    """Requests and replies of `POST /responses`. `reasoning_summary` (`auto`, `concise`, `detailed`) asks a
    reasoning model for its summaries; None sends no `reasoning` option (models without reasoning refuse it)."""

    path = "/responses"

    def __init__(self, *, reasoning_summary: str | None = None) -> None:
        self._reasoning_summary = reasoning_summary

    def stream_body(
        self, model: str, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "input": input_items(messages), "stream": True, "store": False}
        if tools:
            body["tools"] = function_tools(tools)
        if self._reasoning_summary is not None:
            body["reasoning"] = {"summary": self._reasoning_summary}
        return body

    def complete_body(self, model: str, messages: Sequence[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return {
            "model": model,
            "input": input_items(messages),
            "max_output_tokens": max(max_tokens, _MIN_OUTPUT_TOKENS),
            "store": False,
        }

    def complete_result(self, response: Any) -> tuple[str, Usage | None]:
        """The text and usage of a non-streamed response."""
        if not isinstance(response, dict):
            return "", None
        return _output_text(response.get("output")), response_usage(response.get("usage"))

    def reader(self, request: httpx2.Request) -> ResponsesReply:
        return ResponsesReply()


def input_items(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-format messages as Responses input items, in order."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            output = message.get("content")
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id", ""),
                    "output": output if isinstance(output, str) else orjson.dumps(output).decode(),
                }
            )
            continue
        content = message.get("content")
        if role == "assistant":
            text = _text_of(content)
            if text:
                items.append({"role": "assistant", "content": text})
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id", ""),
                        "name": function.get("name", ""),
                        "arguments": function.get("arguments") or "{}",
                    }
                )
            continue
        items.append({"role": role if role in ("system", "developer") else "user", "content": _input_content(content)})
    return items


def function_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat Completions tool schemas (`{"type": "function", "function": {...}}`) in the Responses shape (flat).
    `strict` is sent as the schema says, false by default: the Responses API would otherwise assume true, and
    refuse schemas that do not list every property as required."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            out.append(tool)  # already in the Responses shape, or a tool type of its own
            continue
        converted: dict[str, Any] = {"type": "function", "name": function["name"]}
        if function.get("description"):
            converted["description"] = function["description"]
        converted["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        converted["strict"] = bool(function.get("strict", False))
        out.append(converted)
    return out


def _input_content(content: Any) -> Any:
    """A system or user message's content: a string as it is, chat content parts as Responses input parts."""
    if not isinstance(content, list):
        return content if isinstance(content, str) else ""
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            parts.append({"type": "input_text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append({"type": "input_image", "image_url": url, "detail": "auto"})
        else:
            parts.append(part)
    return parts


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class ResponsesReply:
    """What the events of one streamed response said so far: tool calls by output index, usage, whether it
    completed. Text and reasoning deltas are passed on as they come; an error, a failed or an incomplete response
    raises `ModelError`."""

    __slots__ = ("_reasoning_parts", "calls", "done", "response_id", "usage")

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.calls: dict[int, PartialCall] = {}
        self.usage: Usage | None = None
        self.done = False
        self._reasoning_parts = 0

    def read(self, data: bytes) -> list[ModelEvent]:
        """Take in one event's `data`; the events it gives."""
        event = _decode(data)
        kind = event.get("type")
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            delta = event.get("delta")
            return [TextChunk(delta)] if isinstance(delta, str) and delta else []
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            delta = event.get("delta")
            return [ReasoningChunk(delta)] if isinstance(delta, str) and delta else []
        if kind == "response.function_call_arguments.delta":
            return self._arguments(event.get("output_index"), event.get("delta"))
        if kind in ("response.output_item.added", "response.output_item.done"):
            return self._item(event.get("output_index"), event.get("item"))
        if kind == "response.function_call_arguments.done":
            return self._settle_arguments(event.get("output_index"), event.get("arguments"))
        if kind == "response.reasoning_summary_part.added":
            self._reasoning_parts += 1
            # Summary parts are paragraphs of one reasoning text.
            return [ReasoningChunk("\n\n")] if self._reasoning_parts > 1 else []
        if kind == "response.completed":
            return self._completed(event.get("response"))
        if kind == "response.failed":
            response = event.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            raise classify(shape_of(error or "the response failed"), in_stream=True)
        if kind == "response.incomplete":
            raise _incomplete(event.get("response"))
        if kind == "error" or (kind is None and "error" in event):
            raise classify(shape_of(event), in_stream=True)
        return []

    def completed(self) -> Completed:
        """The end of a stream that ended normally; a stream without `response.completed` was cut short."""
        if not self.done:
            raise ModelError("the model's stream ended before it finished", retryable=True, provider_code="truncated")
        calls = [finish_call(i, p) for i, p in sorted(self.calls.items())]
        return Completed("tool_calls" if calls else "stop", calls, self.usage, self.response_id)

    def _item(self, index: Any, item: Any) -> list[ModelEvent]:
        """A function call item as it starts (id and name, maybe arguments) or ends (its whole arguments)."""
        if not isinstance(item, dict) or item.get("type") != "function_call" or not isinstance(index, int):
            return []
        partial = self.calls.setdefault(index, PartialCall())
        partial.id = partial.id or str(item.get("call_id") or item.get("id") or "")
        partial.name = partial.name or str(item.get("name") or "")
        events: list[ModelEvent] = []
        if not partial.announced and partial.id and partial.name:
            partial.announced = True
            events.append(ToolCallHeader(partial.id, partial.name))
            if partial.arguments:
                events.append(ToolArgumentsDelta(partial.id, "".join(partial.arguments)))
        return events + self._settle_arguments(index, item.get("arguments"))

    def _arguments(self, index: Any, delta: Any) -> list[ModelEvent]:
        if not isinstance(index, int) or not isinstance(delta, str) or not delta:
            return []
        partial = self.calls.setdefault(index, PartialCall())
        partial.arguments.append(delta)
        return [ToolArgumentsDelta(partial.id, delta)] if partial.announced else []

    def _settle_arguments(self, index: Any, arguments: Any) -> list[ModelEvent]:
        """The whole argument text a `done` event carries: what the deltas did not bring is passed on (a provider
        that sends no deltas), and it wins over them when they disagree."""
        if not isinstance(index, int) or not isinstance(arguments, str) or not arguments:
            return []
        partial = self.calls.setdefault(index, PartialCall())
        streamed = "".join(partial.arguments)
        if streamed == arguments:
            return []
        partial.arguments = [arguments]
        if partial.announced and arguments.startswith(streamed):
            return [ToolArgumentsDelta(partial.id, arguments[len(streamed) :])]
        return []

    def _completed(self, response: Any) -> list[ModelEvent]:
        self.done = True
        if not isinstance(response, dict):
            return []
        self.usage = response_usage(response.get("usage"))
        response_id = response.get("id")
        self.response_id = response_id if isinstance(response_id, str) and response_id else None
        events: list[ModelEvent] = []
        # Calls the stream did not show item by item (a gateway that only sends the final response).
        for index, item in enumerate(response.get("output") or ()):
            if isinstance(item, dict) and item.get("type") == "function_call" and index not in self.calls:
                events += self._item(index, item)
        return events


def response_usage(value: Any) -> Usage | None:
    """A response's `usage` (`input_tokens`, `output_tokens` and their details) as a `Usage`."""
    if not isinstance(value, dict):
        return None
    inputs, outputs = value.get("input_tokens_details"), value.get("output_tokens_details")
    return Usage(
        _count(value.get("input_tokens")),
        _count(value.get("output_tokens")),
        _count(inputs.get("cached_tokens")) if isinstance(inputs, dict) else 0,
        _count(outputs.get("reasoning_tokens")) if isinstance(outputs, dict) else 0,
    )


def _count(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def _output_text(output: Any) -> str:
    """The text of a response's message items."""
    texts: list[str] = []
    for item in output if isinstance(output, list) else ():
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "".join(texts)


def _incomplete(response: Any) -> ModelError:
    details = response.get("incomplete_details") if isinstance(response, dict) else None
    reason = details.get("reason") if isinstance(details, dict) else None
    if reason == "content_filter":
        return ModelError("the model provider filtered the reply", provider_code="content_filter")
    reason = reason if isinstance(reason, str) and reason else "incomplete"
    return ModelError(f"the model's reply was cut short ({reason})", provider_code=reason)


def _decode(data: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ModelError(
            "the model sent a malformed stream event", retryable=True, provider_code="malformed_stream"
        ) from e
    if not isinstance(event, dict):
        raise ModelError("the model sent a malformed stream event", retryable=True, provider_code="malformed_stream")
    return event
