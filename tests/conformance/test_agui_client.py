"""The AG-UI endpoint as the real client sees it: `@ag-ui/client`'s `HttpAgent` runs the agent against a live
server, its event verification must pass, and the messages it ends with must be the conversation as stored."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from backend.config import Settings
from tests.conformance.ag_ui import AGUI_CLIENTS, drive
from tests.conftest import LiveServer, make_token

TOKEN = make_token("alice")
ALICE = {"Authorization": f"Bearer {TOKEN}"}


pytestmark = pytest.mark.parametrize("client", AGUI_CLIENTS)


@pytest.fixture
def approval_settings(chat_settings: Settings) -> Settings:
    return chat_settings.model_copy(update={"tools_requiring_approval": ["calculate"]})


def user(text: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "role": "user", "content": text}


async def run(
    live: LiveServer, client: str, thread: str, text: str, messages: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    return await drive(
        client=client,
        url=f"{live.url}/api/agui",
        token=TOKEN,
        threadId=thread,
        runId=extra.pop("runId", str(uuid.uuid4())),
        messages=messages or [],
        newMessage=user(text),
        **extra,
    )


def said(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Role and text of each message, tool calls by name and results by call id."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        if m["role"] == "assistant":
            calls = tuple(c["function"]["name"] for c in m.get("toolCalls") or [])
            out.append(("assistant", m.get("content") or "", calls))
        elif m["role"] == "tool":
            out.append(("tool", m["toolCallId"]))
        else:
            out.append((m["role"], m.get("content")))
    return out


async def test_text(chat: tuple[httpx.AsyncClient, LiveServer], client: str) -> None:
    _, live = chat
    result = await run(live, client, str(uuid.uuid4()), '[[mock:text content="Hello from the service"]]')
    assert result["error"] is None and result["runError"] is None
    assert result["outcome"] == "success"
    assert said(result["messages"])[1:] == [("assistant", "Hello from the service", ())]
    assert result["events"][0] == "RUN_STARTED" and result["events"][-1] == "RUN_FINISHED"


async def test_server_tools_across_steps(chat: tuple[httpx.AsyncClient, LiveServer], client: str) -> None:
    _, live = chat
    text = '[[mock:tool name=calculate args={"expression": "6*7"}]] [[mock:tool name=get_current_time args={}]]'
    result = await run(live, client, str(uuid.uuid4()), text)
    assert result["error"] is None and result["outcome"] == "success"
    messages = result["messages"]
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]  # two calls in one step, then the answer
    assert [c["function"]["name"] for c in messages[1]["toolCalls"]] == ["calculate", "get_current_time"]
    calc = messages[1]["toolCalls"][0]
    assert json.loads(calc["function"]["arguments"]) == {"expression": "6*7"}  # as the model streamed it
    assert messages[2]["toolCallId"] == calc["id"] and "42" in messages[2]["content"]
    assert "42" in messages[-1]["content"]
    # Every server call has its result: nothing is left for the client to answer.
    assert all(m["role"] != "tool" or m["content"] for m in messages)


async def test_tool_error_and_model_error(chat: tuple[httpx.AsyncClient, LiveServer], client: str) -> None:
    _, live = chat
    result = await run(live, client, str(uuid.uuid4()), '[[mock:tool name=calculate args={"expression": "1/0"}]]')
    assert result["error"] is None
    failed = next(m for m in result["messages"] if m["role"] == "tool")
    assert "error" in failed["content"]
    result = await run(live, client, str(uuid.uuid4()), "[[mock:text tokens=10]] [[mock:cut after=4]]")
    # RUN_ERROR passes the client's verification; the partial text stays in the message.
    assert result["runError"] is not None and result["events"][-1] == "RUN_ERROR"
    assert result["error"] is None or "verif" not in result["error"]["message"].lower()
    assert result["messages"][-1]["role"] == "assistant" and result["messages"][-1]["content"].strip()


async def test_cancel(chat: tuple[httpx.AsyncClient, LiveServer], client: str) -> None:
    _, live = chat
    thread, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    result = await run(
        live,
        client,
        thread,
        "[[mock:text tokens=300 delay_ms=10]]",
        runId=run_id,
        cancel={"url": f"{live.url}/api/agui/runs/{run_id}/cancel"},
    )
    assert result["error"] is None
    if client == "@ag-ui/client":
        assert result["outcome"] == "cancelled"
    else:  # a 0.0.x client refuses the `cancelled` outcome: it gets none, and the result says so
        assert result["outcome"] == "absent" and result["result"] == {"cancelled": True}
    assert result["events"][-1] == "RUN_FINISHED"
    streamed = result["messages"][-1]["content"]
    assert streamed and len(streamed.split()) < 300


async def test_replay_from_another_agent_rebuilds_the_conversation(
    chat: tuple[httpx.AsyncClient, LiveServer], client: str
) -> None:
    """A second client (a reload, another pod) replays a run with the stored history first and ends with the same
    messages, ids included, as the client that ran it."""
    _, live = chat
    thread = str(uuid.uuid4())
    first = await run(live, client, thread, '[[mock:text content="First answer"]]')
    run_id = str(uuid.uuid4())
    text = '[[mock:reasoning content="Six sevens"]] [[mock:tool name=calculate args={"expression": "6*7"}]]'
    second = await run(live, client, thread, text, messages=first["messages"], runId=run_id)
    assert second["error"] is None and second["outcome"] == "success"
    replay = await drive(
        client=client,
        url="",
        token=TOKEN,
        threadId=thread,
        runId=run_id,
        messages=[],
        replay={"url": f"{live.url}/api/agui/runs/{run_id}/events?snapshot=true"},
    )
    assert replay["error"] is None and replay["events"][:2] == ["RUN_STARTED", "MESSAGES_SNAPSHOT"]
    assert replay["messages"] == second["messages"]
    reasoning = [m for m in second["messages"] if m["role"] == "reasoning"]
    assert [m["content"] for m in reasoning] == ["Six sevens"] * 2  # the mock reasons before each of its two calls
    assert [m["role"] for m in second["messages"][2:]] == [
        "user",
        "reasoning",
        "assistant",
        "tool",
        "reasoning",
        "assistant",
    ]


async def test_a_client_with_another_history_gets_the_stored_one(
    chat: tuple[httpx.AsyncClient, LiveServer], client: str
) -> None:
    _, live = chat
    thread = str(uuid.uuid4())
    first = await run(live, client, thread, '[[mock:text content="Stored answer"]]')
    stale = await run(
        live, client, thread, '[[mock:text content="Next"]]', messages=[]
    )  # a client that lost the history
    assert stale["error"] is None and "MESSAGES_SNAPSHOT" in stale["events"]
    assert said(stale["messages"]) == [
        *said(first["messages"]),
        ("user", '[[mock:text content="Next"]]'),
        ("assistant", "Next", ()),
    ]


async def test_a_call_waiting_for_the_user_is_left_pending(
    chat: tuple[httpx.AsyncClient, LiveServer], client: str
) -> None:
    """`ask_user` (human in the loop): the run ends with the call open, which the client counts as pending."""
    _, live = chat
    result = await run(live, client, str(uuid.uuid4()), '[[mock:tool name=ask_user args={"question": "Which one?"}]]')
    assert result["error"] is None and result["outcome"] == "success"
    assistant = result["messages"][-1]
    assert assistant["role"] == "assistant" and assistant["toolCalls"][0]["function"]["name"] == "ask_user"
    assert not any(m["role"] == "tool" for m in result["messages"])


HIGHLIGHT = {
    "name": "highlight_element",
    "description": "Highlight an element of the page the user is on.",
    "parameters": {"type": "object", "properties": {"selector": {"type": "string"}}, "required": ["selector"]},
}


async def test_a_frontend_tool_round_trip(chat: tuple[httpx.AsyncClient, LiveServer], client: str) -> None:
    """The run's `tools` reach the model; its call is left pending; the client's next run carries the tool message
    and streams the continuation; the client ends with the conversation as stored (one result per call)."""
    _, live = chat
    thread = str(uuid.uuid4())
    text = 'Show me the buy button [[mock:tool name=highlight_element args={"selector": "#buy"}]]'
    asked = await run(live, client, thread, text, tools=[HIGHLIGHT])
    assert asked["error"] is None and asked["outcome"] == "success"
    call = asked["messages"][-1]["toolCalls"][0]
    assert call["function"]["name"] == "highlight_element"
    assert json.loads(call["function"]["arguments"]) == {"selector": "#buy"}
    result = {"id": str(uuid.uuid4()), "role": "tool", "toolCallId": call["id"], "content": '{"highlighted": true}'}
    continued = await drive(
        client=client,
        url=f"{live.url}/api/agui",
        token=TOKEN,
        threadId=thread,
        runId=str(uuid.uuid4()),
        messages=asked["messages"],
        newMessages=[result],
        tools=[HIGHLIGHT],
    )
    assert continued["error"] is None and continued["outcome"] == "success"
    assert "MESSAGES_SNAPSHOT" not in continued["events"]  # the client's history is the stored one
    assert said(continued["messages"]) == [
        ("user", text),
        ("assistant", "", ("highlight_element",)),
        ("tool", call["id"]),
        ("assistant", continued["messages"][-1]["content"], ()),
    ]
    assert '{"highlighted": true}' in continued["messages"][-1]["content"]  # the model read it


async def test_an_approval_interrupt_answered_by_resume(approval_settings: Settings, client: str) -> None:
    """A call that needs approval ends the run with the `interrupt` outcome both clients accept; the next run's
    `resume` approves it and the call runs."""
    async with LiveServer(approval_settings) as live:
        thread = str(uuid.uuid4())
        asked = await run(live, client, thread, '[[mock:tool name=calculate args={"expression": "6*7"}]]')
        assert asked["error"] is None and asked["outcome"] == "interrupt"
        [interrupt] = asked["interrupts"]
        call_id = asked["messages"][-1]["toolCalls"][0]["id"]
        assert interrupt["toolCallId"] == call_id and interrupt["reason"] == "tool_approval"
        continued = await drive(
            client=client,
            url=f"{live.url}/api/agui",
            token=TOKEN,
            threadId=thread,
            runId=str(uuid.uuid4()),
            messages=asked["messages"],
            resume=[{"interruptId": interrupt["id"], "status": "resolved", "payload": {"approved": True}}],
        )
        assert continued["error"] is None and continued["outcome"] == "success"
        tool = next(m for m in continued["messages"] if m["role"] == "tool")
        assert tool["toolCallId"] == call_id and "42" in tool["content"]
        assert "42" in continued["messages"][-1]["content"]
