"""The mock model's side of the Responses API (``POST /v1/responses``): the request's input items read back as
chat messages (so the same markers and replies apply), and a ``Plan`` encoded as Responses stream events or as a
``response`` body.

A streamed reply is ``response.created``, then one output item per part of the plan (reasoning summary, message
text, each function call, in that order, each with its ``added`` / delta / ``done`` events), then
``response.completed`` with the whole output and the usage. A plan's ``stream_error`` cuts the stream with an
``error`` event or a ``response.failed`` (``error_event``); its ``incomplete_reason`` ends it with
``response.incomplete``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import count
from typing import Any

import orjson

from backend.devtools._mock_wire import CONTENT_END, Plan, StreamError, fragments, token_usage


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The request's ``instructions`` and ``input`` as chat messages; None when ``input`` is not a string or a
    list of objects."""
    raw = body.get("input")
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    if isinstance(raw, str):
        return [*messages, {"role": "user", "content": raw}]
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        return None
    for item in raw:
        kind = item.get("type", "message")
        if kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            if not messages or messages[-1].get("role") != "assistant":
                messages.append({"role": "assistant", "content": None})
            messages[-1].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")})
        elif kind == "message":
            messages.append({"role": item.get("role", "user"), "content": _text(item.get("content"))})
    return messages


def chat_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's function tools in the chat shape (``{"type": "function", "function": {"name": ...}}``)."""
    return [
        {"type": "function", "function": {"name": tool.get("name")}}
        for tool in body.get("tools") or ()
        if isinstance(tool, dict) and tool.get("type") == "function"
    ]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )  # input_text, output_text
    return ""


def reply_message(plan: Plan) -> dict[str, Any]:
    """The plan's reply as a chat ``assistant`` message (what a stored response adds to its conversation)."""
    text = "".join(orjson.loads(b"[" + b",".join(plan.content) + b"]")) if plan.content else None
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if plan.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in plan.tool_calls
        ]
    return message


def usage(prompt_tokens: int, plan: Plan) -> dict[str, Any]:
    """The Responses API's ``usage`` object, counted as the chat completions one is."""
    chat = token_usage(prompt_tokens, plan)
    cached = chat.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    reasoning = chat.get("completion_tokens_details", {}).get("reasoning_tokens", 0)
    return {
        "input_tokens": chat["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": chat["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": chat["total_tokens"],
    }


class ResponseEnvelope:
    """One response's id, model and the running ``sequence_number`` of its events."""

    def __init__(self, response_id: str, model: str, *, previous_response_id: str | None = None) -> None:
        self.id = response_id
        self.model = model
        self.previous_response_id = previous_response_id
        self.created = int(time.time())
        self._seq = count()

    def response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": output,
            "previous_response_id": self.previous_response_id,
            "error": None,
            "incomplete_details": None,
            "usage": None,
            **extra,
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": next(self._seq), **fields})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def token(self, kind: str, head: bytes, token: bytes) -> bytes:
        """A delta event whose ``delta`` is a pre-encoded JSON string (the per-token path)."""
        seq = str(next(self._seq)).encode()
        return b"".join(
            (b"event: ", kind.encode(), b'\ndata: {"type":"', kind.encode(), b'","sequence_number":', seq, head)
        ) + b"".join((b',"delta":', token, b"}\n\n"))


def output_items(plan: Plan, env: ResponseEnvelope) -> list[dict[str, Any]]:
    """The finished output items of the plan: reasoning, message, function calls."""
    items: list[dict[str, Any]] = []
    if plan.reasoning:
        summary = "".join(orjson.loads(b"[" + b",".join(plan.reasoning) + b"]"))
        items.append(
            {"type": "reasoning", "id": f"rs_{env.id}", "summary": [{"type": "summary_text", "text": summary}]}
        )
    if plan.content:
        text = "".join(orjson.loads(b"[" + b",".join(plan.content) + b"]"))
        part = {"type": "output_text", "text": text, "annotations": []}
        items.append(
            {"type": "message", "id": f"msg_{env.id}", "role": "assistant", "status": "completed", "content": [part]}
        )
    for i, call in enumerate(plan.tool_calls):
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{env.id}_{i}",
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "status": "completed",
            }
        )
    return items


def sse_events(plan: Plan, env: ResponseEnvelope, usage_: dict[str, Any]) -> Iterator[bytes]:
    """The whole stream of the plan, each event one SSE message; a ``stream_error`` cuts it (``fail_after``)."""
    yield env.event("response.created", response=env.response("in_progress", []))
    items = output_items(plan, env)
    for index, item in enumerate(items):
        yield from _item_events(plan, env, index, item, last=index == len(items) - 1)
    if not items:
        yield CONTENT_END
    if plan.incomplete_reason is not None:
        details = {"reason": plan.incomplete_reason}
        yield env.event("response.incomplete", response=env.response("incomplete", items, incomplete_details=details))
        return
    yield env.event("response.completed", response=env.response("completed", items, usage=usage_))


def error_event(error: StreamError, env: ResponseEnvelope) -> bytes:
    """The event that ends a stream with ``error``: an ``error`` event, or ``response.failed``."""
    if error.event == "failed":
        failure = {"code": error.code, "message": error.message}
        return env.event("response.failed", response=env.response("failed", [], error=failure))
    return env.event("error", code=error.code, message=error.message, param=None)


def _item_events(plan: Plan, env: ResponseEnvelope, index: int, item: dict[str, Any], *, last: bool) -> Iterator[bytes]:
    """The item's events; after the deltas of the `last` item, the end of the content (what follows is not paced)."""
    kind, item_id = item["type"], item["id"]
    end = (CONTENT_END,) if last else ()
    where = f',"item_id":"{item_id}","output_index":{index}'.encode()
    if kind == "reasoning":
        yield env.event("response.output_item.added", output_index=index, item={**item, "summary": []})
        part = {"type": "summary_text", "text": ""}
        yield env.event(
            "response.reasoning_summary_part.added", item_id=item_id, output_index=index, summary_index=0, part=part
        )
        head = where + b',"summary_index":0'
        for token in plan.reasoning:
            yield env.token("response.reasoning_summary_text.delta", head, token)
        yield from end
        text = item["summary"][0]["text"]
        yield env.event(
            "response.reasoning_summary_text.done", item_id=item_id, output_index=index, summary_index=0, text=text
        )
        yield env.event("response.output_item.done", output_index=index, item=item)
    elif kind == "message":
        yield env.event(
            "response.output_item.added", output_index=index, item={**item, "content": [], "status": "in_progress"}
        )
        empty = {"type": "output_text", "text": "", "annotations": []}
        yield env.event("response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=empty)
        head = where + b',"content_index":0'
        for token in plan.content:
            yield env.token("response.output_text.delta", head, token)
        yield from end
        part = item["content"][0]
        yield env.event(
            "response.output_text.done", item_id=item_id, output_index=index, content_index=0, text=part["text"]
        )
        yield env.event("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part)
        yield env.event("response.output_item.done", output_index=index, item=item)
    else:
        yield env.event(
            "response.output_item.added", output_index=index, item={**item, "arguments": "", "status": "in_progress"}
        )
        for piece in fragments(item["arguments"]):
            yield env.event("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=piece)
        yield from end
        yield env.event(
            "response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=item["arguments"]
        )
        yield env.event("response.output_item.done", output_index=index, item=item)


def response_body(plan: Plan, env: ResponseEnvelope, usage_: dict[str, Any]) -> bytes:
    """The non-streaming ``response`` body."""
    return orjson.dumps(env.response("completed", output_items(plan, env), usage=usage_))
