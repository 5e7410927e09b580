"""Human in the loop with the real client: the `ai` package's `Chat` (useChat without React, `chat_round_trip.mjs`)
runs against a live service answered by the mock model, through a frontend tool round trip (`onToolCall` +
`addToolOutput` / `addToolResult`, `sendAutomaticallyWhen`) and an approval round trip (`addToolApprovalResponse`;
ai 5, which has no approval state, through the REST endpoint). Each test then checks the session's `ui-messages`
with the package's own `validateUIMessages`, and that they equal what the client holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from backend.config import Settings
from tests.api.test_chat_stream import ALICE, new_session
from tests.conformance.ai_sdk import chat_round_trip, ui_messages_error
from tests.conformance.test_ui_messages import ui_messages
from tests.conftest import LiveServer

HIGHLIGHT = {
    "name": "highlight_element",
    "description": "Highlight an element of the page the user is on.",
    "inputSchema": {"type": "object", "properties": {"selector": {"type": "string"}}, "required": ["selector"]},
}
CALL_HIGHLIGHT = '[[mock:tool name=highlight_element args={"selector": "#buy"}]]'
CALL_CALCULATE = '[[mock:tool name=calculate args={"expression": "6*7"}]]'
APPROVING_CLIENTS = ("ai", "ai7")
"""The `ai` packages with tool approvals (6 and 7)."""

Chat = tuple[httpx.AsyncClient, LiveServer]


@pytest.fixture
async def approval_chat(chat_settings: Settings) -> AsyncIterator[Chat]:
    settings = chat_settings.model_copy(update={"tools_requiring_approval": ["calculate"]})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


@pytest.fixture
async def ai5_approval_chat(chat_settings: Settings) -> AsyncIterator[Chat]:
    settings = chat_settings.model_copy(update={"tools_requiring_approval": ["calculate"], "ai_sdk_version": 5})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


async def round_trip(chat: Chat, client_name: str, text: str, **plan: Any) -> tuple[str, dict[str, Any]]:
    """A new session of Alice's, and where the `client_name` chat ends after sending `text` with `plan`."""
    client, live = chat
    sid = await new_session(client)
    api = f"{live.url}/api/chat/sessions/{sid}/stream"
    result = await chat_round_trip({"api": api, "headers": ALICE, "text": text, **plan}, client_name)
    return sid, result


def tool_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in message["parts"] if p["type"].startswith("tool-")]


def text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


async def assert_history_is_what_the_client_holds(
    chat: Chat, sid: str, held: list[dict[str, Any]], validators: tuple[str, ...] = APPROVING_CLIENTS
) -> list[dict[str, Any]]:
    """`ui-messages` pass the real `validateUIMessages` and equal the client's messages: the user's by id and
    text (useChat sends text parts without `state`), the replies whole (their metadata aside)."""
    history = await ui_messages(chat[0], sid)
    for client_name in validators:
        assert ui_messages_error(history, client_name) is None, client_name
    assert [(m["id"], m["role"]) for m in history] == [(m["id"], m["role"]) for m in held]
    for stored, live in zip(history, held, strict=True):
        if live["role"] == "user":
            assert text_of(stored) == text_of(live)
        else:
            for stored_part, live_part in zip(stored["parts"], live["parts"], strict=True):
                assert stored_part == live_part
    return history


@pytest.mark.parametrize("client_name", ["ai5", "ai", "ai7"])
async def test_a_frontend_tool_round_trip(chat: Chat, client_name: str) -> None:
    """The model calls a tool the page declared; `onToolCall` answers it, the chat posts the answer back by itself,
    and the continuation streams into the same assistant message."""
    sid, result = await round_trip(
        chat,
        client_name,
        f"Show me the buy button {CALL_HIGHLIGHT}",
        body={"tools": [HIGHLIGHT]},
        outputs={"highlight_element": {"highlighted": True}},
    )
    assert result["status"] == "ready" and result["error"] is None
    assert [f["finishReason"] for f in result["finishes"]] == ["tool-calls", "stop"]
    user, assistant = result["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    [part] = tool_parts(assistant)
    assert part["type"] == "tool-highlight_element" and part["state"] == "output-available"
    assert part["input"] == {"selector": "#buy"} and part["output"] == {"highlighted": True}
    assert [p["type"] for p in assistant["parts"]] == ["step-start", "tool-highlight_element", "step-start", "text"]
    assert '{"highlighted":true}' in text_of(assistant)  # the model read the output (the mock quotes it)

    # Two requests: the message, then the answer (the assistant message last, its tool part answered); each with
    # the tools from the transport's `body`.
    first, answer = (r["body"] for r in result["requests"])
    assert first["tools"] == answer["tools"] == [HIGHLIGHT]
    answered = answer["messages"][-1]
    assert answered["role"] == "assistant" and tool_parts(answered)[0]["state"] == "output-available"

    await assert_history_is_what_the_client_holds(chat, sid, result["messages"], ("ai5", *APPROVING_CLIENTS))


@pytest.mark.parametrize("client_name", APPROVING_CLIENTS)
async def test_an_approval_round_trip(approval_chat: Chat, client_name: str) -> None:
    sid, result = await round_trip(approval_chat, client_name, CALL_CALCULATE, approval={"approved": True})
    assert result["status"] == "ready" and result["error"] is None
    assert [f["finishReason"] for f in result["finishes"]] == ["tool-calls", "stop"]
    [answer] = [r["body"]["messages"][-1] for r in result["requests"][1:]]
    [responded] = tool_parts(answer)
    assert responded["state"] == "approval-responded" and responded["approval"]["approved"] is True
    _, assistant = result["messages"]
    [part] = tool_parts(assistant)
    assert part["type"] == "tool-calculate" and part["state"] == "output-available"
    assert part["output"]["result"] == 42
    assert "42" in text_of(assistant)

    await assert_history_is_what_the_client_holds(approval_chat, sid, result["messages"])


@pytest.mark.parametrize("client_name", APPROVING_CLIENTS)
async def test_a_denied_call(approval_chat: Chat, client_name: str) -> None:
    sid, result = await round_trip(
        approval_chat, client_name, CALL_CALCULATE, approval={"approved": False, "reason": "not now"}
    )
    assert result["status"] == "ready" and result["error"] is None
    assert [f["finishReason"] for f in result["finishes"]] == ["tool-calls", "stop"]
    _, assistant = result["messages"]
    [part] = tool_parts(assistant)
    assert part["state"] == "output-denied" and part["approval"]["approved"] is False
    assert "output" not in part

    await assert_history_is_what_the_client_holds(approval_chat, sid, result["messages"])


@pytest.mark.parametrize("client_name", APPROVING_CLIENTS)
async def test_a_call_left_waiting_for_approval(approval_chat: Chat, client_name: str) -> None:
    sid, result = await round_trip(approval_chat, client_name, CALL_CALCULATE, approval=None)
    assert result["status"] == "ready" and result["error"] is None
    assert [f["finishReason"] for f in result["finishes"]] == ["tool-calls"]
    _, assistant = result["messages"]
    [part] = tool_parts(assistant)
    assert part["state"] == "approval-requested"
    assert part["approval"] == {"id": f"approval-{part['toolCallId']}"}

    await assert_history_is_what_the_client_holds(approval_chat, sid, result["messages"])


async def test_ai5_takes_the_approval_request_as_a_data_part_and_reads_the_rest_approved_continuation(
    ai5_approval_chat: Chat,
) -> None:
    """ai 5 has no approval state: the request comes as a `data-tool-approval-request` part the client accepts, the
    app answers over REST, and the continuation assembled by ai 5 into the same message is valid."""
    sid, result = await round_trip(ai5_approval_chat, "ai5", CALL_CALCULATE, restApproval={"approved": True})
    assert result["status"] == "ready" and result["error"] is None
    assert [f["finishReason"] for f in result["finishes"]] == ["tool-calls"]  # the chat's own request
    [asked] = result["data"]
    call_id = asked["data"]["toolCallId"]
    assert asked == {
        "type": "data-tool-approval-request",
        "id": f"approval-{call_id}",
        "data": {
            "approvalId": f"approval-{call_id}",
            "toolCallId": call_id,
            "toolName": "calculate",
            "input": {"expression": "6*7"},
        },
    }
    [approval] = result["approvals"]
    assert approval["status"] == 200 and approval["awaiting"] == []
    assert result["followErrors"] == []
    _, assistant = result["messages"]
    kinds = [p["type"] for p in assistant["parts"]]
    assert kinds == ["step-start", "tool-calculate", "data-tool-approval-request", "step-start", "text"]
    [part] = tool_parts(assistant)
    assert part["toolCallId"] == call_id and part["state"] == "output-available"
    assert part["output"]["result"] == 42 and "approval" not in part  # ai 5 parts have no approval
    assert "42" in text_of(assistant)

    await assert_history_is_what_the_client_holds(
        ai5_approval_chat, sid, result["messages"], ("ai5", *APPROVING_CLIENTS)
    )


async def test_ai5_reads_a_rest_denial_as_a_tool_error(ai5_approval_chat: Chat) -> None:
    """ai 5 has no `output-denied` state (nor its chunk): the denied call reaches it as the error the model reads."""
    sid, result = await round_trip(
        ai5_approval_chat, "ai5", CALL_CALCULATE, restApproval={"approved": False, "reason": "not now"}
    )
    assert result["status"] == "ready" and result["error"] is None
    assert result["followErrors"] == []
    _, assistant = result["messages"]
    [part] = tool_parts(assistant)
    assert part["state"] == "output-error"
    assert part["errorText"] == "The user denied this call; it did not run. Reason: not now"

    await assert_history_is_what_the_client_holds(
        ai5_approval_chat, sid, result["messages"], ("ai5", *APPROVING_CLIENTS)
    )


@pytest.mark.parametrize("client_name", APPROVING_CLIENTS)
async def test_a_rest_approval_is_read_into_the_message_the_client_holds(approval_chat: Chat, client_name: str) -> None:
    """Another tab (or the host app) approves over REST: the client continues its message with the continuation."""
    sid, result = await round_trip(approval_chat, client_name, CALL_CALCULATE, restApproval={"approved": True})
    assert result["status"] == "ready" and result["error"] is None and result["followErrors"] == []
    assert len(result["requests"]) == 2  # the message, then the continuation's stream (no POST of the answer)
    _, assistant = result["messages"]
    [part] = tool_parts(assistant)
    # The client's part was `approval-requested` and it sent no response: the continuation's output settles it; the
    # approval stays as the client got it, while the history knows it was approved.
    assert part["state"] == "output-available" and part["output"]["result"] == 42
    assert part["approval"] == {"id": f"approval-{part['toolCallId']}"}
    assert "42" in text_of(assistant)
    history = await ui_messages(approval_chat[0], sid)
    for validator in APPROVING_CLIENTS:
        assert ui_messages_error(history, validator) is None, validator
    assert tool_parts(history[1]) == [{**part, "approval": {**part["approval"], "approved": True}}]


@pytest.mark.parametrize("client_name", ["ai5", *APPROVING_CLIENTS])
async def test_resume_stream_cannot_follow_a_continuation(chat_settings: Settings, client_name: str) -> None:
    """Why the docs say `readUIMessageStream({message})`: `Chat.resumeStream` starts a new message from the stream,
    and a continuation's first chunk is the output of a call that message does not hold. (So `useChat({resume:
    true})` reloading while a continuation streams fails the same way.)"""
    update: dict[str, Any] = {
        "tools_requiring_approval": ["calculate"],
        "ai_sdk_version": 5 if client_name == "ai5" else 6,
    }
    settings = chat_settings.model_copy(update=update)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        _, result = await round_trip(
            (client, live), client_name, CALL_CALCULATE, restApproval={"approved": True}, followWith="resumeStream"
        )
    assert result["status"] == "error"
    says = "tool-output-error must be preceded" if client_name == "ai5" else "No tool invocation found"
    assert says in result["error"]["message"]  # ai 5 names every tool output `tool-output-error` here
    _, assistant = result["messages"]
    assert assistant["parts"] == []  # the message the client held was replaced by the new, failed one


@pytest.mark.parametrize("client_name", ["ai5", *APPROVING_CLIENTS])
async def test_several_answers_of_one_step_go_back_in_one_request(chat: Chat, client_name: str) -> None:
    """A server tool, two frontend calls (one fails in the page) and a question to the user in one step: the chat
    posts once, when every call has its answer, and the model reads all four."""
    ask = '[[mock:tool name=ask_user args={"question": "Which colour?", "choices": ["red", "blue"]}]]'
    sid, result = await round_trip(
        chat,
        client_name,
        f"{CALL_CALCULATE} {CALL_HIGHLIGHT} {ask} [[mock:tool name=scroll_to args={{}}]]",
        body={"tools": [HIGHLIGHT, {**HIGHLIGHT, "name": "scroll_to", "inputSchema": {"type": "object"}}]},
        outputs={"highlight_element": {"highlighted": True}, "ask_user": "blue"},
        errors={"scroll_to": "no such element"},
    )
    assert result["status"] == "ready" and result["error"] is None
    assert [f["finishReason"] for f in result["finishes"]] == ["tool-calls", "stop"]
    assert len(result["requests"]) == 2
    _, assistant = result["messages"]
    calculated, highlight, asked, scrolled = tool_parts(assistant)
    assert (calculated["state"], calculated["output"]["result"]) == ("output-available", 42)
    assert (highlight["state"], highlight["output"]) == ("output-available", {"highlighted": True})
    assert (asked["type"], asked["state"], asked["output"]) == ("tool-ask_user", "output-available", "blue")
    assert (scrolled["state"], scrolled["errorText"]) == ("output-error", "no such element")
    said = text_of(assistant)
    assert '{"highlighted":true}' in said and "blue" in said and "no such element" in said and "42" in said

    await assert_history_is_what_the_client_holds(chat, sid, result["messages"], ("ai5", *APPROVING_CLIENTS))


async def test_ai5_history_of_a_call_left_waiting_for_approval(ai5_approval_chat: Chat) -> None:
    sid, result = await round_trip(ai5_approval_chat, "ai5", CALL_CALCULATE)
    assert result["status"] == "ready" and result["error"] is None
    _, assistant = result["messages"]
    assert [p["type"] for p in assistant["parts"]] == ["step-start", "tool-calculate", "data-tool-approval-request"]
    assert tool_parts(assistant)[0]["state"] == "input-available"

    await assert_history_is_what_the_client_holds(
        ai5_approval_chat, sid, result["messages"], ("ai5", *APPROVING_CLIENTS)
    )


@pytest.mark.parametrize("client_name", APPROVING_CLIENTS)
async def test_a_reloaded_page_approves_from_its_history(approval_chat: Chat, client_name: str) -> None:
    """The user left a call waiting for approval and comes back: a chat started from `ui-messages` approves it with
    `addToolApprovalResponse`, and the continuation goes on in the message the history holds."""
    client, live = approval_chat
    sid, first = await round_trip(approval_chat, client_name, CALL_CALCULATE)
    history = await ui_messages(client, sid)
    api = f"{live.url}/api/chat/sessions/{sid}/stream"
    plan = {"api": api, "headers": ALICE, "messages": history, "text": None, "approval": {"approved": True}}
    result = await chat_round_trip(plan, client_name)
    assert result["status"] == "ready" and result["error"] is None
    assert [f["finishReason"] for f in result["finishes"]] == ["stop"]
    _, assistant = result["messages"]
    assert assistant["id"] == first["messages"][1]["id"]
    [part] = tool_parts(assistant)
    assert part["state"] == "output-available" and part["output"]["result"] == 42
    assert "42" in text_of(assistant)

    await assert_history_is_what_the_client_holds(approval_chat, sid, result["messages"])


@pytest.mark.parametrize("client_name", ["ai5", *APPROVING_CLIENTS])
async def test_a_reloaded_page_answers_a_question_from_its_history(chat: Chat, client_name: str) -> None:
    client, live = chat
    ask = '[[mock:tool name=ask_user args={"question": "Which colour?", "choices": ["red", "blue"]}]]'
    sid, _ = await round_trip(chat, client_name, ask)
    history = await ui_messages(client, sid)
    api = f"{live.url}/api/chat/sessions/{sid}/stream"
    plan = {"api": api, "headers": ALICE, "messages": history, "text": None, "historyOutputs": {"ask_user": "blue"}}
    result = await chat_round_trip(plan, client_name)
    assert result["status"] == "ready" and result["error"] is None
    _, assistant = result["messages"]
    [part] = tool_parts(assistant)
    assert part["state"] == "output-available" and part["output"] == "blue"
    assert "blue" in text_of(assistant)

    await assert_history_is_what_the_client_holds(chat, sid, result["messages"], ("ai5", *APPROVING_CLIENTS))
