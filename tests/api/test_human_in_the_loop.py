"""Human in the loop end to end: frontend tools, `ask_user` and approvals, over HTTP with the mock model, real
Postgres and Redis. A call that waits for a person ends the turn; the answer (useChat's next request, the REST
endpoints) continues the same assistant message, once, on any pod."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.api.test_chat_stream import ALICE, new_session, stored, turn_calls
from tests.conftest import LiveServer, auth
from tests.protocol_check import check_body
from tests.sse import chunks, read_stream, types

HIGHLIGHT = {
    "name": "highlight_element",
    "description": "Highlight an element of the page the user is on.",
    "inputSchema": {"type": "object", "properties": {"selector": {"type": "string"}}, "required": ["selector"]},
}
CALL_HIGHLIGHT = '[[mock:tool name=highlight_element args={"selector": "#buy"}]]'


def use_chat_body(sid: str, text: str, *, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": sid,
        "trigger": "submit-message",
        "messages": [{"id": f"u-{uuid.uuid4().hex[:8]}", "role": "user", "parts": [{"type": "text", "text": text}]}],
    }
    if tools is not None:
        body["tools"] = tools
    return body


def answering_body(first: dict[str, Any], message_id: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """What useChat posts after `addToolOutput` / `addToolApprovalResponse`: the messages with the assistant last."""
    return {**first, "messages": [*first["messages"], {"id": message_id, "role": "assistant", "parts": parts}]}


async def post_stream(client: httpx.AsyncClient, sid: str, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    return await read_stream(client, "POST", f"/api/chat/sessions/{sid}/stream", json=body, headers=ALICE)


async def follow(client: httpx.AsyncClient, task_id: str) -> bytes:
    response, body = await read_stream(client, "GET", f"/api/chat/tasks/{task_id}/stream", headers=ALICE)
    assert response.status_code == 200, body
    return body


def input_available(body: bytes, name: str) -> dict[str, Any]:
    return next(c for c in chunks(body) if c["type"] == "tool-input-available" and c["toolName"] == name)


async def awaiting(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    detail = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
    return list(detail["awaiting"])


async def wait_until_stored(db: asyncpg.Connection, sid: str, role: str, count: int) -> list[asyncpg.Record]:
    for _ in range(200):
        rows = await stored(db, sid)
        if sum(1 for r in rows if r["role"] == role) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"never stored {count} {role} message(s)")


@pytest.fixture
def approval_settings(chat_settings: Settings) -> Settings:
    return chat_settings.model_copy(update={"tools_requiring_approval": ["calculate"]})


@pytest.fixture
async def approval_chat(approval_settings: Settings) -> Any:
    async with LiveServer(approval_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


async def test_a_frontend_tool_waits_for_the_browser_and_its_output_continues_the_same_message(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    first = use_chat_body(sid, f"Show me the buy button {CALL_HIGHLIGHT}", tools=[HIGHLIGHT])
    response, body = await post_stream(client, sid, first)
    assert response.status_code == 200, body
    assert check_body(body) == []
    call = input_available(body, "highlight_element")
    assert call["input"] == {"selector": "#buy"}
    assert "tool-output-available" not in types(body)
    assert chunks(body)[-1] == {"type": "finish", "finishReason": "tool-calls", **_metadata(body)}
    # The model was offered the frontend tool with its schema.
    offered = {t["function"]["name"]: t["function"] for t in turn_calls(mock_llm)[0]["tools"]}
    assert offered["highlight_element"]["parameters"]["required"] == ["selector"]

    waiting = await awaiting(client, sid)
    assert [(w["tool_call_id"], w["kind"], w["tool_name"], w["input"]) for w in waiting] == [
        (call["toolCallId"], "frontend", "highlight_element", {"selector": "#buy"})
    ]
    message_id = chunks(body)[0]["messageId"]
    part = {
        "type": "tool-highlight_element",
        "toolCallId": call["toolCallId"],
        "state": "output-available",
        "input": {"selector": "#buy"},
        "output": {"highlighted": True},
    }
    answer = answering_body(first, message_id, [{"type": "step-start"}, part])
    response, continued = await post_stream(client, sid, answer)
    assert response.status_code == 200, continued
    assert check_body(continued, earlier_calls=[call["toolCallId"]]) == []
    assert chunks(continued)[0]["messageId"] == message_id  # the same assistant message goes on
    outputs = [c for c in chunks(continued) if c["type"] == "tool-output-available"]
    assert outputs == [
        {"type": "tool-output-available", "toolCallId": call["toolCallId"], "output": {"highlighted": True}}
    ]
    assert '{"highlighted":true}' in "".join(c.get("delta", "") for c in chunks(continued))  # the model saw it
    assert chunks(continued)[-1]["finishReason"] == "stop"

    rows = await wait_until_stored(db, sid, "assistant", 2)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(rows[2]["content"]) == {"highlighted": True}
    assert await awaiting(client, sid) == []

    # useChat resending the same answer (a retry, a second tab) finds the same continuation; nothing is stored twice.
    again, replayed = await post_stream(client, sid, answer)
    assert again.headers["x-copilot-task-id"] == response.headers["x-copilot-task-id"]
    assert types(replayed) == types(continued)
    assert len(await stored(db, sid)) == 4
    assert len(turn_calls(mock_llm)) == 2


async def test_the_rest_endpoint_answers_a_frontend_tool_with_an_error_and_the_model_reads_it(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await post_stream(client, sid, use_chat_body(sid, CALL_HIGHLIGHT, tools=[HIGHLIGHT]))
    call_id = input_available(body, "highlight_element")["toolCallId"]
    r = await client.post(
        f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output", json={"error": "no such element"}, headers=ALICE
    )
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    assert r.json()["awaiting"] == []
    continued = await follow(client, task_id)
    assert check_body(continued, earlier_calls=[call_id]) == []
    errors = [c for c in chunks(continued) if c["type"] == "tool-output-error"]
    assert errors == [{"type": "tool-output-error", "toolCallId": call_id, "errorText": "no such element"}]
    assert "no such element" in "".join(c.get("delta", "") for c in chunks(continued))
    # A resend answers the same, once.
    again = await client.post(
        f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output", json={"error": "no such element"}, headers=ALICE
    )
    assert again.status_code == 200 and again.json()["task_id"] == task_id
    rows = await wait_until_stored(db, sid, "assistant", 2)
    assert len(rows) == 4


async def test_an_approved_call_runs_and_a_denied_one_is_told_to_the_model(
    approval_chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    client, _ = approval_chat
    sid = await new_session(client)
    _, body = await post_stream(client, sid, {"message": '[[mock:tool name=calculate args={"expression": "6*7"}]]'})
    assert check_body(body) == []
    call_id = input_available(body, "calculate")["toolCallId"]
    approval = [c for c in chunks(body) if c["type"] == "tool-approval-request"]
    assert approval == [{"type": "tool-approval-request", "approvalId": f"approval-{call_id}", "toolCallId": call_id}]
    assert chunks(body)[-1]["finishReason"] == "tool-calls"
    [waiting] = await awaiting(client, sid)
    assert waiting["kind"] == "approval" and waiting["approval_id"] == f"approval-{call_id}"
    assert len(turn_calls(mock_llm)) == 1  # nothing ran yet

    r = await client.post(
        f"/api/chat/sessions/{sid}/tool-calls/{call_id}/approval", json={"approved": True}, headers=ALICE
    )
    assert r.status_code == 200, r.text
    continued = await follow(client, r.json()["task_id"])
    assert check_body(continued, earlier_calls=[call_id]) == []
    [output] = [c for c in chunks(continued) if c["type"] == "tool-output-available"]
    assert output["toolCallId"] == call_id and output["output"]["result"] == 42
    rows = await wait_until_stored(db, sid, "assistant", 2)
    assert json.loads(rows[2]["content"])["result"] == 42

    # Denied: the tool does not run, the client gets `tool-output-denied`, the model reads the denial and reason.
    _, body = await post_stream(client, sid, {"message": '[[mock:tool name=calculate args={"expression": "1+1"}]]'})
    call_id = input_available(body, "calculate")["toolCallId"]
    r = await client.post(
        f"/api/chat/sessions/{sid}/tool-calls/{call_id}/approval",
        json={"approved": False, "reason": "not now"},
        headers=ALICE,
    )
    continued = await follow(client, r.json()["task_id"])
    assert check_body(continued, earlier_calls=[call_id]) == []
    assert {"type": "tool-output-denied", "toolCallId": call_id} in chunks(continued)
    assert "tool-output-available" not in types(continued)
    last_prompt = turn_calls(mock_llm)[-1]["messages"]
    denial = next(m for m in last_prompt if m.get("tool_call_id") == call_id)
    assert "denied" in denial["content"] and "not now" in denial["content"]


async def test_use_chat_approval_response_continues_with_the_tool_output(
    approval_chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, _ = approval_chat
    sid = await new_session(client)
    first = use_chat_body(sid, '[[mock:tool name=calculate args={"expression": "2+3"}]]')
    _, body = await post_stream(client, sid, first)
    call_id = input_available(body, "calculate")["toolCallId"]
    part = {
        "type": "tool-calculate",
        "toolCallId": call_id,
        "state": "approval-responded",
        "input": {"expression": "2+3"},
        "approval": {"id": f"approval-{call_id}", "approved": True},
    }
    _, continued = await post_stream(client, sid, answering_body(first, chunks(body)[0]["messageId"], [part]))
    [output] = [c for c in chunks(continued) if c["type"] == "tool-output-available"]
    assert output["output"]["result"] == 5


async def test_ask_user_waits_for_the_answer(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    ask = '[[mock:tool name=ask_user args={"question": "Which colour?", "choices": ["red", "blue"]}]]'
    _, body = await post_stream(client, sid, {"message": ask})
    assert check_body(body) == []
    call_id = input_available(body, "ask_user")["toolCallId"]
    [waiting] = await awaiting(client, sid)
    assert waiting["kind"] == "ask_user" and waiting["input"]["choices"] == ["red", "blue"]
    # An approval is not an answer to a question.
    wrong = await client.post(
        f"/api/chat/sessions/{sid}/tool-calls/{call_id}/approval", json={"approved": True}, headers=ALICE
    )
    assert wrong.status_code == 400
    r = await client.post(
        f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output", json={"output": "blue"}, headers=ALICE
    )
    continued = await follow(client, r.json()["task_id"])
    assert "blue" in "".join(c.get("delta", "") for c in chunks(continued))
    answer = next(m for m in turn_calls(mock_llm)[-1]["messages"] if m.get("tool_call_id") == call_id)
    assert answer["content"] == "blue"


async def test_a_server_tool_in_the_same_step_runs_at_once_and_the_message_waits_for_the_other_call(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    both = f'[[mock:tool name=calculate args={{"expression": "6*7"}}]] {CALL_HIGHLIGHT}'
    _, body = await post_stream(client, sid, use_chat_body(sid, both, tools=[HIGHLIGHT]))
    assert check_body(body) == []
    calc = input_available(body, "calculate")["toolCallId"]
    assert any(c["type"] == "tool-output-available" and c["toolCallId"] == calc for c in chunks(body))
    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "tool"]
    [waiting] = await awaiting(client, sid)
    assert waiting["tool_name"] == "highlight_element"
    # Answering the waiting call continues the message (the server tool's result is part of it, not "moved on").
    r = await client.post(
        f"/api/chat/sessions/{sid}/tool-calls/{waiting['tool_call_id']}/output", json={"output": "ok"}, headers=ALICE
    )
    assert r.status_code == 200, r.text
    continued = await follow(client, r.json()["task_id"])
    assert "42" in "".join(c.get("delta", "") for c in chunks(continued))  # the model saw both results


async def test_two_calls_of_one_message_continue_once_both_are_answered(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    two = f'{CALL_HIGHLIGHT} [[mock:tool name=highlight_element args={{"selector": "#cart"}}]]'
    _, body = await post_stream(client, sid, use_chat_body(sid, two, tools=[HIGHLIGHT]))
    first_id, second_id = [c["toolCallId"] for c in chunks(body) if c["type"] == "tool-input-available"]
    url = f"/api/chat/sessions/{sid}/tool-calls/{{}}/output"
    r = await client.post(url.format(first_id), json={"output": "ok"}, headers=ALICE)
    assert r.status_code == 200 and r.json()["task_id"] is None
    assert [w["tool_call_id"] for w in r.json()["awaiting"]] == [second_id]
    assert len(turn_calls(mock_llm)) == 1
    r = await client.post(url.format(second_id), json={"output": "ok too"}, headers=ALICE)
    continued = await follow(client, r.json()["task_id"])
    assert check_body(continued, earlier_calls=[first_id, second_id]) == []
    assert [c["toolCallId"] for c in chunks(continued) if c["type"] == "tool-output-available"] == [first_id, second_id]


async def test_a_new_message_closes_waiting_calls_as_not_answered_and_the_history_stays_valid(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await post_stream(client, sid, use_chat_body(sid, CALL_HIGHLIGHT, tools=[HIGHLIGHT]))
    call_id = input_available(body, "highlight_element")["toolCallId"]
    _, reply = await post_stream(client, sid, use_chat_body(sid, '[[mock:text content="fine"]]', tools=[HIGHLIGHT]))
    assert check_body(reply) == []
    assert await awaiting(client, sid) == []
    prompt = turn_calls(mock_llm)[-1]["messages"]
    results = [m for m in prompt if m.get("role") == "tool" and m["tool_call_id"] == call_id]
    assert len(results) == 1 and "not_answered" in results[0]["content"]  # every call has exactly one result
    late = await client.post(
        f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output", json={"output": "late"}, headers=ALICE
    )
    assert late.status_code == 409


async def test_answers_are_refused_for_calls_that_do_not_wait_or_are_not_the_callers(
    chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await post_stream(client, sid, use_chat_body(sid, CALL_HIGHLIGHT, tools=[HIGHLIGHT]))
    call_id = input_available(body, "highlight_element")["toolCallId"]
    url = f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output"
    assert (await client.post(url, json={"output": 1}, headers=auth("mallory"))).status_code == 404
    unknown = f"/api/chat/sessions/{sid}/tool-calls/call_nope/output"
    assert (await client.post(unknown, json={"output": 1}, headers=ALICE)).status_code == 404
    both = await client.post(url, json={"output": 1, "error": "x"}, headers=ALICE)
    assert both.status_code == 422
    nul = await client.post(url, json={"output": {"a": "\u0000"}}, headers=ALICE)
    assert nul.status_code == 422
    assert [w["tool_call_id"] for w in await awaiting(client, sid)] == [call_id]  # nothing of that was taken


@pytest.mark.parametrize(
    ("tools", "status", "says"),
    [
        ([{**HIGHLIGHT, "name": "calculate"}], 400, "server tool"),
        ([{**HIGHLIGHT, "inputSchema": {"type": "string"}}], 400, "object"),
        ([{**HIGHLIGHT, "inputSchema": {"type": "object", "properties": {"a": {"type": 5}}}}], 400, "JSON Schema"),
        ([{**HIGHLIGHT, "name": "bad name!"}], 400, "name"),
        ([HIGHLIGHT, HIGHLIGHT], 400, "twice"),
        ([{**HIGHLIGHT, "name": f"t{i}"} for i in range(33)], 422, "33"),
        ([{**HIGHLIGHT, "extra": 1}], 422, "extra"),
    ],
)
async def test_frontend_tool_declarations_are_checked(
    chat: tuple[httpx.AsyncClient, LiveServer], tools: list[dict[str, Any]], status: int, says: str
) -> None:
    client, _ = chat
    sid = await new_session(client)
    r = await client.post(f"/api/chat/sessions/{sid}/stream", json=use_chat_body(sid, "hi", tools=tools), headers=ALICE)
    assert r.status_code == status, r.text
    assert says in r.text


async def test_a_waiting_call_survives_a_restart_and_is_answered_on_another_pod(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with LiveServer(chat_settings) as first, httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await post_stream(client, sid, use_chat_body(sid, CALL_HIGHLIGHT, tools=[HIGHLIGHT]))
        call_id = input_available(body, "highlight_element")["toolCallId"]
    # The first pod is gone; a second one (same Postgres and Redis) takes the answer, and still knows the tools.
    async with LiveServer(chat_settings) as second, httpx.AsyncClient(base_url=second.url, timeout=30) as client:
        assert [w["tool_call_id"] for w in await awaiting(client, sid)] == [call_id]
        r = await client.post(
            f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output", json={"output": "done"}, headers=ALICE
        )
        continued = await follow(client, r.json()["task_id"])
        assert chunks(continued)[-1]["finishReason"] == "stop"
    rows = await wait_until_stored(db, sid, "assistant", 2)
    assert rows[2]["content"] == "done"


async def test_an_unanswered_call_expires_into_an_error_the_model_reads(
    chat_settings: Settings, db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    settings = chat_settings.model_copy(update={"human_input_timeout_seconds": 0.5})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await post_stream(client, sid, use_chat_body(sid, CALL_HIGHLIGHT, tools=[HIGHLIGHT]))
        call_id = input_available(body, "highlight_element")["toolCallId"]
        for _ in range(100):
            rows = await db.fetch(
                "SELECT awaiting_state, content FROM chat_messages WHERE session_id = $1 AND tool_call_id = $2",
                uuid.UUID(sid),
                call_id,
            )
            if rows[0]["awaiting_state"] == "expired":
                break
            await asyncio.sleep(0.05)
        assert rows[0]["awaiting_state"] == "expired"
        assert "in time" in rows[0]["content"]
        assert await awaiting(client, sid) == []
        late = await client.post(
            f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output", json={"output": "late"}, headers=ALICE
        )
        assert late.status_code == 410


def _metadata(body: bytes) -> dict[str, Any]:
    last = chunks(body)[-1]
    return {"messageMetadata": last["messageMetadata"]} if "messageMetadata" in last else {}


async def test_the_same_answer_on_two_pods_at_once_continues_the_message_once(
    chat_settings: Settings, db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    async with (
        LiveServer(chat_settings) as one,
        LiveServer(chat_settings) as two,
        httpx.AsyncClient(base_url=one.url, timeout=30) as first,
        httpx.AsyncClient(base_url=two.url, timeout=30) as second,
    ):
        sid = await new_session(first)
        _, body = await post_stream(first, sid, use_chat_body(sid, CALL_HIGHLIGHT, tools=[HIGHLIGHT]))
        call_id = input_available(body, "highlight_element")["toolCallId"]
        url = f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output"
        answers = await asyncio.gather(
            *(c.post(url, json={"output": "done"}, headers=ALICE) for c in (first, second, first, second))
        )
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        assert len({a.json()["task_id"] for a in answers}) == 1
        await follow(first, answers[0].json()["task_id"])
        rows = await wait_until_stored(db, sid, "assistant", 2)
        await asyncio.sleep(0.3)  # a second continuation, if one had started, would have stored by now
        assert (
            [r["role"] for r in await stored(db, sid)]
            == [r["role"] for r in rows]
            == [
                "user",
                "assistant",
                "tool",
                "assistant",
            ]
        )
        assert len(turn_calls(mock_llm)) == 2


async def test_a_continuation_that_asks_again_extends_the_same_message(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    again = '[[mock:tool name=ask_user args={"question": "And now?"} when=results times=1 key=again]]'
    _, body = await post_stream(client, sid, use_chat_body(sid, f"{CALL_HIGHLIGHT} {again}", tools=[HIGHLIGHT]))
    message_id = chunks(body)[0]["messageId"]
    first = input_available(body, "highlight_element")["toolCallId"]
    r = await client.post(f"/api/chat/sessions/{sid}/tool-calls/{first}/output", json={"output": 1}, headers=ALICE)
    continued = await follow(client, r.json()["task_id"])
    assert chunks(continued)[0]["messageId"] == message_id
    assert chunks(continued)[-1]["finishReason"] == "tool-calls"  # the continuation asked the user in turn
    second = input_available(continued, "ask_user")["toolCallId"]
    r = await client.post(f"/api/chat/sessions/{sid}/tool-calls/{second}/output", json={"output": "yes"}, headers=ALICE)
    last = await follow(client, r.json()["task_id"])
    assert chunks(last)[0]["messageId"] == message_id  # still the same assistant message
    assert chunks(last)[-1]["finishReason"] == "stop"
    assert check_body(last, earlier_calls=[second]) == []
