"""The mock model's Responses API, read by the `openai` SDK's own Responses stream helper (which assembles the
output from the events, so inconsistent events fail here), and its stored responses (`previous_response_id`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import openai
import pytest

from backend.devtools.mock_llm import MockLLMServer

TOOL = {"type": "function", "name": "calculate", "parameters": {"type": "object", "properties": {}}, "strict": False}


@pytest.fixture
async def sdk(mock_llm: MockLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=mock_llm.base_url, api_key="test", max_retries=0)
    yield client
    await client.close()


async def test_the_sdk_assembles_text_reasoning_and_calls(sdk: openai.AsyncOpenAI) -> None:
    message = (
        '[[mock:reasoning content="Think twice"]] [[mock:text content="Two calls"]] '
        '[[mock:tool name=calculate args={"expression": "1+1"}]] [[mock:tool name=calculate args={"expression": "2"}]]'
    )
    async with sdk.responses.stream(model="mock-model", input=message, tools=[TOOL]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Two calls"
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [c.arguments for c in calls] == ['{"expression":"1+1"}', '{"expression":"2"}']
    reasoning = final.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "Think twice"
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 2


async def test_the_stream_closes_right_after_its_last_delta(sdk: openai.AsyncOpenAI) -> None:
    """As with chat completions: the events that close the message and the response come with its last delta."""
    started = time.monotonic()
    last_delta = 0.0
    async with sdk.responses.stream(model="mock-model", input="[[mock:text tokens=3 delay_ms=200]]") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                last_delta = time.monotonic()
    ended = time.monotonic()
    assert last_delta - started >= 0.4
    assert ended - last_delta < 0.15  # the three done events and `response.completed` are not paced


async def test_a_non_streamed_response(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="mock-model", input='[[mock:text content="Trip to Rome"]]')
    assert response.output_text == "Trip to Rome" and response.status == "completed"


async def test_stored_responses_continue_and_expire(sdk: openai.AsyncOpenAI) -> None:
    first = await sdk.responses.create(model="mock-model", input='[[mock:tool name=calculate args={"a": 1}]]')
    [call] = [item for item in first.output if item.type == "function_call"]
    follow = await sdk.responses.create(
        model="mock-model",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}],
    )
    # The mock resolved the chain: it saw the call (named) and its result.
    assert follow.output_text == "Here is what the tools told me. calculate returned: 42"
    with pytest.raises(openai.BadRequestError) as unknown:
        await sdk.responses.create(model="mock-model", previous_response_id="resp_gone", input="hi")
    assert unknown.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as expired:
        await sdk.responses.create(model="mock-model", previous_response_id=follow.id, input="[[mock:expire_response]]")
    assert expired.value.code == "previous_response_not_found"
    fresh = await sdk.responses.create(model="mock-model", input='[[mock:expire_response]] [[mock:text content="ok"]]')
    assert fresh.output_text == "ok"


async def test_stream_errors_failed_and_incomplete(sdk: openai.AsyncOpenAI) -> None:
    failed = await sdk.responses.create(
        model="mock-model", input="[[mock:text tokens=4]] [[mock:stream_error after=3 event=failed]]", stream=True
    )
    kinds = [event.type async for event in failed]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    incomplete = await sdk.responses.create(
        model="mock-model", input="[[mock:text tokens=2]] [[mock:incomplete reason=max_output_tokens]]", stream=True
    )
    events = [event async for event in incomplete]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert (
        last.response.incomplete_details is not None and last.response.incomplete_details.reason == "max_output_tokens"
    )
