"""What the service really streams, assembled by the real `ai` client: text, tools across steps, errors."""

from __future__ import annotations

from typing import Any

import httpx

from backend.config import Settings
from tests.api.test_chat_stream import new_session, send
from tests.conformance.ai_sdk import AI_CLIENTS, assemble, violations
from tests.conftest import LiveServer


async def reply(chat: tuple[httpx.AsyncClient, LiveServer], message: str) -> tuple[bytes, dict[str, Any]]:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, message)
    assert violations(body) == []
    return body, assemble(body)


async def test_text_reply(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    _, result = await reply(chat, '[[mock:text content="Hello from the service"]]')
    message = result["chat"]["message"]
    assert result["chat"]["status"] == "ready" and result["chat"]["finishReason"] == "stop"
    texts = [p["text"] for p in message["parts"] if p["type"] == "text"]
    assert texts == ["Hello from the service"]
    assert message["metadata"]["taskId"]


async def test_tools_across_steps(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    _, result = await reply(
        chat, '[[mock:tool name=calculate args={"expression": "6*7"}]] [[mock:tool name=get_current_time args={}]]'
    )
    parts = result["chat"]["message"]["parts"]
    assert [p["type"] for p in parts if p["type"] != "step-start"] == [
        "tool-calculate",
        "tool-get_current_time",
        "text",
    ]
    assert sum(p["type"] == "step-start" for p in parts) == 2
    calc = next(p for p in parts if p["type"] == "tool-calculate")
    assert calc["state"] == "output-available" and calc["input"] == {"expression": "6*7"}
    assert "42" in str(calc["output"])
    assert "42" in next(p["text"] for p in parts if p["type"] == "text")


async def test_tool_error(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    _, result = await reply(chat, '[[mock:tool name=calculate args={"expression": "1/0"}]]')
    calc = next(p for p in result["chat"]["message"]["parts"] if p["type"] == "tool-calculate")
    assert calc["state"] == "output-error" and calc["errorText"]


async def test_model_error_after_partial_text(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    _, result = await reply(chat, "[[mock:text tokens=10]] [[mock:cut after=4]]")
    assert result["chat"]["status"] == "error"
    assert result["chat"]["error"]
    texts = [p["text"] for p in result["chat"]["message"]["parts"] if p["type"] == "text"]
    assert texts and texts[0].strip()  # the partial text stays in the message


async def test_provider_error_before_any_text(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    _, result = await reply(chat, "[[mock:region_block]]")
    assert result["chat"]["status"] == "error"
    assert "region" in str(result["chat"]["error"])


async def test_a_failed_reply_tells_its_stable_code_to_on_data(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    """The transient `data-error` part reaches `useChat`'s `onData` in every client, and is not kept in the message:
    it comes before the `error` chunk, at which `useChat` stops reading."""
    body, _ = await reply(chat, "[[mock:region_block]]")
    for client in AI_CLIENTS:
        result = assemble(body, client)
        assert result["violations"] == [], client
        assert result["chat"]["status"] == "error" and "region" in str(result["chat"]["error"]), client
        error = {"type": "data-error", "data": {"code": "region_blocked", "retryable": False}, "transient": True}
        assert result["chat"]["data"] == [error], client
        message = result["chat"]["message"]
        assert message is None or all(p["type"] != "data-error" for p in message["parts"]), client


async def test_reasoning_and_usage_metadata(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    """The real clients keep streamed reasoning as a `reasoning` part and the finish metadata as message metadata."""
    body, _ = await reply(chat, '[[mock:reasoning content="Six sevens"]] [[mock:text content="It is 42"]]')
    for client in AI_CLIENTS:
        result = assemble(body, client)
        assert result["violations"] == [], client
        message = result["chat"]["message"]
        parts = [p for p in message["parts"] if p["type"] != "step-start"]
        assert [(p["type"], p["text"]) for p in parts] == [("reasoning", "Six sevens"), ("text", "It is 42")], client
        assert parts[0]["state"] == "done", client
        usage = message["metadata"]["usage"]
        assert message["metadata"]["model"] == "mock-model" and usage["completionTokens"] > 0, client
        assert message["metadata"]["taskId"], client  # merged with the start chunk's metadata


async def test_a_reply_over_the_responses_api_is_the_same_stream(chat_settings: Settings) -> None:
    """With `COPILOT_LLM_API=responses` the clients assemble the same message: reasoning, tool calls, text, usage."""
    settings = chat_settings.model_copy(update={"llm_api": "responses", "responses_reasoning_summary": "auto"})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        message = '[[mock:reasoning content="Let me add"]] [[mock:tool name=calculate args={"expression": "6*7"}]]'
        body, _ = await reply((client, live), message)
    for client_name in AI_CLIENTS:
        result = assemble(body, client_name)
        assert result["violations"] == [], client_name
        message_parts = [p for p in result["chat"]["message"]["parts"] if p["type"] != "step-start"]
        assert [p["type"] for p in message_parts] == ["reasoning", "tool-calculate", "reasoning", "text"], client_name
        assert message_parts[1]["state"] == "output-available", client_name
        assert result["chat"]["message"]["metadata"]["usage"]["reasoningTokens"] > 0, client_name
