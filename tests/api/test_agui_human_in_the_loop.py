"""Human in the loop over AG-UI end to end: frontend `tools`, tool messages answering a run's pending calls in the
next run, approvals as interrupts answered by `resume`; real servers, mock model, Postgres and Redis."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.api.test_agui import ALICE, BOB, events, kinds, run, run_input, text_of, user
from tests.api.test_human_in_the_loop import wait_until_stored
from tests.conftest import LiveServer
from tests.sse import read_stream

HIGHLIGHT = {
    "name": "highlight_element",
    "description": "Highlight an element of the page the user is on.",
    "parameters": {"type": "object", "properties": {"selector": {"type": "string"}}, "required": ["selector"]},
}
CALL_HIGHLIGHT = '[[mock:tool name=highlight_element args={"selector": "#buy"}]]'


def assistant_with_calls(body: bytes) -> dict[str, Any]:
    """The assistant message a client assembles from a run that called tools (what it sends back)."""
    evs = events(body)
    starts = [e for e in evs if e["type"] == "TOOL_CALL_START"]
    calls = []
    for start in starts:
        args = "".join(
            e["delta"] for e in evs if e["type"] == "TOOL_CALL_ARGS" and e["toolCallId"] == start["toolCallId"]
        )
        calls.append(
            {
                "id": start["toolCallId"],
                "type": "function",
                "function": {"name": start["toolCallName"], "arguments": args},
            }
        )
    return {"id": starts[0]["parentMessageId"], "role": "assistant", "toolCalls": calls}


async def read_run(client: httpx.AsyncClient, run_id: str) -> tuple[httpx.Response, bytes]:
    return await read_stream(client, "GET", f"/api/agui/runs/{run_id}/events", headers=ALICE)


def tool_message(call_id: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"t-{uuid.uuid4().hex[:8]}", "role": "tool", "toolCallId": call_id, "content": content, **extra}


@pytest.fixture
async def approval_chat(chat_settings: Settings) -> Any:
    settings = chat_settings.model_copy(update={"tools_requiring_approval": ["calculate"]})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


async def test_a_frontend_tool_round_trip(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    """`tools` are offered to the model; its call ends the run pending; the next run's tool message answers it and
    streams the continuation, which a resent answer run joins."""
    client, _ = chat
    thread = str(uuid.uuid4())
    first = user(f"Show me the buy button {CALL_HIGHLIGHT}", "u1")
    body = run_input(thread, first, run_id="ask", protocolVersion="1.0.0", tools=[HIGHLIGHT])
    response, asked = await run(client, body)
    assert response.status_code == 200, asked
    streamed = [r for r in mock_llm.requests if r.get("stream")][-1]
    offered = {t["function"]["name"]: t["function"] for t in streamed["tools"]}
    assert offered["highlight_element"]["parameters"]["required"] == ["selector"]
    call = assistant_with_calls(asked)["toolCalls"][0]
    assert call["function"]["name"] == "highlight_element" and json.loads(call["function"]["arguments"]) == {
        "selector": "#buy"
    }
    assert "TOOL_CALL_RESULT" not in kinds(asked)
    assert events(asked)[-1]["outcome"] == {"type": "success", "pendingToolCallIds": [call["id"]]}

    history = [first, assistant_with_calls(asked), tool_message(call["id"], '{"highlighted": true}')]
    answer = run_input(thread, *history, run_id="answer", protocolVersion="1.0.0", tools=[HIGHLIGHT])
    response, continued = await run(client, answer)
    assert response.status_code == 200, continued
    assert kinds(continued)[0] == "RUN_STARTED" and events(continued)[0]["runId"] == "answer"
    # The client holds its tool message: no second result for the call.
    assert "TOOL_CALL_RESULT" not in kinds(continued)
    assert '{"highlighted": true}' in text_of(continued)  # the model read the browser's output
    assert events(continued)[-1]["outcome"] == {"type": "success"}
    rows = await wait_until_stored(db, thread, "assistant", 2)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    # The reply goes on: its next step's message is numbered after the one that asked, as the stored history is.
    asked_id = assistant_with_calls(asked)["id"]
    text_id = next(e for e in events(continued) if e["type"] == "TEXT_MESSAGE_START")["messageId"]
    assert asked_id.endswith("-0") and text_id == asked_id.removesuffix("-0") + "-1"
    _, snap = await read_stream(client, "GET", "/api/agui/runs/answer/events?snapshot=true", headers=ALICE)
    stored_ids = [m["id"] for m in events(snap)[1]["messages"]]
    assert asked_id in stored_ids and text_id in stored_ids

    # Resent (a retry, another tab, another run id): the same continuation, nothing stored twice.
    _, again = await run(client, {**answer, "runId": "answer-again"})
    assert text_of(again) == text_of(continued)
    _, replay = await read_run(client, "answer")
    assert text_of(replay) == text_of(continued)
    assert next(e for e in events(replay) if e["type"] == "TEXT_MESSAGE_START")["messageId"] == text_id
    rows = await wait_until_stored(db, thread, "assistant", 2)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]


async def test_a_frontend_tool_answered_on_another_pod_with_an_error(
    chat_settings: Settings, db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    """Pod A runs the call; pod B takes the tool message (with AG-UI's `error`) and streams the continuation; the
    tools declared on pod A are still offered."""
    thread = str(uuid.uuid4())
    first = user(CALL_HIGHLIGHT, "u1")
    async with LiveServer(chat_settings) as a, httpx.AsyncClient(base_url=a.url, timeout=30) as client:
        _, asked = await run(client, run_input(thread, first, tools=[HIGHLIGHT]))
    message = assistant_with_calls(asked)
    call_id = message["toolCalls"][0]["id"]
    failed = tool_message(call_id, "", error="no such element on this page")
    async with LiveServer(chat_settings) as b, httpx.AsyncClient(base_url=b.url, timeout=30) as client:
        body = run_input(thread, first, message, failed)
        del body["tools"]  # absent: the thread's last declared tools
        response, continued = await run(client, body)
        assert response.status_code == 200, continued
    assert "TOOL_CALL_RESULT" not in kinds(continued) and kinds(continued)[-1] == "RUN_FINISHED"
    streamed = [r for r in mock_llm.requests if r.get("stream")][-1]
    assert "highlight_element" in [t["function"]["name"] for t in streamed["tools"]]
    assert "no such element on this page" in json.dumps(streamed["messages"])
    rows = await wait_until_stored(db, thread, "assistant", 2)
    assert "no such element on this page" in rows[2]["content"]


async def test_an_approval_is_an_interrupt_answered_by_resume(approval_chat: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = approval_chat
    thread = str(uuid.uuid4())
    first = user('[[mock:tool name=calculate args={"expression": "6*7"}]]', "u1")
    _, asked = await run(client, run_input(thread, first, protocolVersion="1.0.0"))
    call_id = assistant_with_calls(asked)["toolCalls"][0]["id"]
    outcome = events(asked)[-1]["outcome"]
    assert outcome["type"] == "interrupt"
    [interrupt] = outcome["interrupts"]
    assert interrupt["id"] == f"approval-{call_id}" and interrupt["toolCallId"] == call_id
    assert interrupt["reason"] == "tool_approval" and interrupt["responseSchema"]["required"] == ["approved"]
    history = [first, assistant_with_calls(asked)]

    # An answer of the wrong kind, or to an interrupt that is not ours, is refused.
    wrong = run_input(thread, *history, tool_message(call_id, "42"))
    assert (await client.post("/api/agui", json=wrong, headers=ALICE)).status_code == 400
    resume = [{"interruptId": "nope", "status": "resolved", "payload": {"approved": True}}]
    r = await client.post("/api/agui", json=run_input(thread, *history, resume=resume), headers=ALICE)
    assert r.status_code == 400
    resume = [{"interruptId": interrupt["id"], "status": "resolved", "payload": {"approved": True}}]
    r = await client.post("/api/agui", json=run_input(thread, *history, resume=resume), headers=BOB)
    assert r.status_code == 404  # not Bob's thread

    response, continued = await run(client, run_input(thread, *history, resume=resume, protocolVersion="1.0.0"))
    assert response.status_code == 200, continued
    result = next(e for e in events(continued) if e["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == call_id and "42" in result["content"]
    assert events(continued)[-1]["outcome"] == {"type": "success"}


async def test_a_denial_by_resume_is_told_to_the_model(
    approval_chat: tuple[httpx.AsyncClient, Any], mock_llm: MockLLMServer
) -> None:
    client, _ = approval_chat
    thread = str(uuid.uuid4())
    first = user('[[mock:tool name=calculate args={"expression": "1+1"}]]', "u1")
    _, asked = await run(client, run_input(thread, first))  # a 0.0.x client: the same interrupt outcome
    assert events(asked)[-1]["outcome"]["type"] == "interrupt"
    call_id = assistant_with_calls(asked)["toolCalls"][0]["id"]
    resume = [{"interruptId": f"approval-{call_id}", "status": "cancelled", "payload": {"reason": "not now"}}]
    _, continued = await run(client, run_input(thread, first, assistant_with_calls(asked), resume=resume))
    result = next(e for e in events(continued) if e["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == call_id and "denied" in result["content"]
    assert "not now" in json.dumps([r for r in mock_llm.requests if r.get("stream")][-1]["messages"])


async def test_frontend_tools_are_checked_and_answers_must_answer_something(
    chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, _ = chat
    thread = str(uuid.uuid4())
    clash = [{"name": "calculate", "description": "mine", "parameters": {"type": "object"}}]
    r = await client.post("/api/agui", json=run_input(thread, user("hi"), tools=clash), headers=ALICE)
    assert r.status_code == 400 and "server tool" in r.text
    not_object = [{"name": "x", "description": "", "parameters": {"type": "string"}}]
    r = await client.post("/api/agui", json=run_input(thread, user("hi"), tools=not_object), headers=ALICE)
    assert r.status_code == 400
    await run(client, run_input(thread, user('[[mock:text content="ok"]]', "u1")))
    r = await client.post("/api/agui", json=run_input(thread, tool_message("unknown-call", "x")), headers=ALICE)
    assert r.status_code == 400 and "answers a tool call" in r.text


async def test_a_run_answering_some_calls_of_a_message_waits_for_the_rest(
    chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    """Two calls of one message (a frontend tool and `ask_user`): answering one is 409 naming the other; answering
    both (the earlier answer resent, as a client sends the whole history) continues the message once."""
    client, _ = chat
    thread = str(uuid.uuid4())
    ask = '[[mock:tool name=ask_user args={"question": "Which colour?"}]]'
    first = user(f"{CALL_HIGHLIGHT} {ask}", "u1")
    _, asked = await run(client, run_input(thread, first, tools=[HIGHLIGHT]))
    message = assistant_with_calls(asked)
    highlight, question = (c["id"] for c in message["toolCalls"])
    answered = tool_message(highlight, "done")
    r = await client.post("/api/agui", json=run_input(thread, first, message, answered), headers=ALICE)
    assert r.status_code == 409 and r.json()["error"]["details"]["waiting"] == [question]
    both = run_input(thread, first, message, answered, tool_message(question, "blue"))
    response, continued = await run(client, both)
    assert response.status_code == 200, continued
    assert "TOOL_CALL_RESULT" not in kinds(continued) and kinds(continued)[-1] == "RUN_FINISHED"
    assert "blue" in text_of(continued) and "done" in text_of(continued)
