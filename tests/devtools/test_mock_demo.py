"""The demo model (`backend/devtools/_mock_demo.py`) over the mock's real HTTP: plain words become real tool calls
when the request offers the tool, results are told back, titles come from the first message, and markers still
win."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from backend.devtools._mock_demo import ASK_CHOICES, ASK_QUESTION, arithmetic_in, title_for
from backend.devtools.mock_llm import MODEL_ID, MockLLMServer
from backend.tools.registry import default_registry
from tests.devtools.test_mock_llm import text_of, tool_calls_of, user

TOOLS: Any = default_registry().schemas()


@pytest.fixture
async def sdk() -> AsyncIterator[openai.AsyncOpenAI]:
    async with (
        MockLLMServer() as llm,
        openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as client,
    ):
        yield client


async def ask(
    sdk: openai.AsyncOpenAI, messages: list[ChatCompletionMessageParam], tools: list[ChatCompletionToolParam]
) -> Any:
    response = await sdk.chat.completions.create(model=MODEL_ID, messages=messages, stream=True, tools=tools)
    return [chunk async for chunk in response]


@pytest.mark.parametrize(
    ("message", "name", "args"),
    [
        ("What is 6*7?", "calculate", {"expression": "6*7"}),
        ("what is 12 times 3 plus 1", "calculate", {"expression": "12 * 3 + 1"}),
        ("What time is it in Tokyo?", "get_current_time", {"timezone": "Asia/Tokyo"}),
        ("what's the time", "get_current_time", {"timezone": "UTC"}),
        ("Write a report on solar power.", "generate_report", {"topic": "solar power", "sections": 3}),
        ("Ask me something", "ask_user", {"question": ASK_QUESTION, "choices": list(ASK_CHOICES)}),
    ],
)
async def test_plain_words_become_tool_calls(sdk: openai.AsyncOpenAI, message: str, name: str, args: Any) -> None:
    calls = tool_calls_of(await ask(sdk, user(message), TOOLS))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [(name, args)]
    assert calls[0]["id"].startswith("call_demo_")


async def test_no_tool_call_when_the_request_offers_no_tool(sdk: openai.AsyncOpenAI) -> None:
    chunks = await ask(sdk, user("What is 6*7?"), [])
    assert tool_calls_of(chunks) == {}
    assert "demo model" in text_of(chunks)


async def test_a_result_is_told_back(sdk: openai.AsyncOpenAI) -> None:
    calls = tool_calls_of(await ask(sdk, user("What is 6*7?"), TOOLS))
    call = calls[0]
    messages: list[ChatCompletionMessageParam] = [
        *user("What is 6*7?"),
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": "calculate", "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": '{"expression": "6*7", "result": 42}'},
    ]
    assert text_of(await ask(sdk, messages, TOOLS)) == "6*7 = **42**"


async def test_markdown_showcase_streams_token_by_token(sdk: openai.AsyncOpenAI) -> None:
    chunks = await ask(sdk, user("show me some markdown"), TOOLS)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 50
    assert "| `calculate` |" in "".join(deltas) and "```python" in "".join(deltas)


async def test_a_title_is_the_start_of_the_first_message(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.chat.completions.create(
        model=MODEL_ID,
        messages=[
            {"role": "system", "content": "Write a title of at most six words for this conversation."},
            {"role": "user", "content": "Write a report on the history of the Roman empire, please."},
        ],
    )
    assert response.choices[0].message.content == "Write a report on the history"


async def test_markers_still_win(sdk: openai.AsyncOpenAI) -> None:
    chunks = await ask(sdk, user('What is 6*7? [[mock:text content="Forty-two"]]'), TOOLS)
    assert tool_calls_of(chunks) == {} and text_of(chunks) == "Forty-two"


def test_what_counts_as_arithmetic() -> None:
    assert arithmetic_in("sqrt(2)^2 please") == "sqrt(2)**2"
    assert arithmetic_in("I have 3 cats") is None
    assert arithmetic_in("version 1.2.3") is None
    assert title_for("") == "New chat"


@pytest.mark.parametrize(("message", "greeted"), [("hi", True), ("Hello!", True), ("Hi from the host app", False)])
async def test_only_a_bare_greeting_gets_the_greeting(sdk: openai.AsyncOpenAI, message: str, greeted: bool) -> None:
    text = text_of(await ask(sdk, user(message), TOOLS))
    assert text.startswith("Hi! I'm the copilot-chat demo model") is greeted
    assert (f'You said: "{message}"' in text) is not greeted


async def test_an_answer_to_ask_user_is_told_back(sdk: openai.AsyncOpenAI) -> None:
    call = tool_calls_of(await ask(sdk, user("ask me something"), TOOLS))[0]
    messages: list[ChatCompletionMessageParam] = [
        *user("ask me something"),
        {
            "role": "assistant",
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": "ask_user", "arguments": call["arguments"]}}
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "What is 6*7?"},
    ]
    assert 'You answered "What is 6*7?"' in text_of(await ask(sdk, messages, TOOLS))
