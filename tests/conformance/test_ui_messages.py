"""`GET /api/chat/sessions/{id}/ui-messages` gives what `useChat({ messages })` needs: messages the real `ai` package
validates (`safeValidateUIMessages`, ai 5, 6 and 7), and replies equal to what the `ai` client assembled from the
same turns while they streamed (same id, same parts in the same final states)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_chat_stream import ALICE, new_session, send, wait_idle
from tests.conformance.ai_sdk import AI_CLIENTS, assemble, ui_messages_error
from tests.conftest import LiveServer

TURNS = [
    # tools across two steps, then text
    '[[mock:tool name=calculate args={"expression": "6*7"}]] [[mock:tool name=get_current_time args={}]]',
    # a tool that fails
    '[[mock:tool name=calculate args={"expression": "1/0"}]]',
    # plain text, with Markdown and a quote character
    '[[mock:text content="**Done**: it \\"works\\"."]]',
    # reasoning, then the answer
    '[[mock:reasoning content="Six sevens make 42"]] [[mock:text content="It is 42"]]',
]


async def ui_messages(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/chat/sessions/{sid}/ui-messages", headers=ALICE)
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()
    return messages


async def test_history_is_valid_and_equals_what_the_stream_assembled(
    chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, _ = chat
    sid = await new_session(client)
    live = []
    for i, text in enumerate(TURNS):
        _, body = await send(client, sid, text, client_message_id=f"m-{i}")
        live.append(assemble(body)["chat"]["message"])
    await wait_idle(client, sid)

    history = await ui_messages(client, sid)
    for ai in AI_CLIENTS:
        assert ui_messages_error(history, ai) is None, ai
    assert [(m["role"], m["id"]) for m in history[::2]] == [("user", f"m-{i}") for i in range(len(TURNS))]
    assert [m["parts"] for m in history[::2]] == [[{"type": "text", "text": t, "state": "done"}] for t in TURNS]
    for streamed, stored in zip(live, history[1::2], strict=True):
        streamed.pop("metadata", None)  # the stream's `{taskId}`; the history carries none
        assert stored == streamed
    kinds = [[p["type"] for p in m["parts"]] for m in history[1::2]]
    assert kinds[0] == ["step-start", "tool-calculate", "tool-get_current_time", "step-start", "text"]
    assert kinds[3] == ["step-start", "reasoning", "text"]
    failed = history[3]["parts"][1]
    assert failed["state"] == "output-error" and failed["errorText"]


@pytest.mark.parametrize("client_name", AI_CLIENTS)
def test_the_check_refuses_what_is_not_a_ui_message(client_name: str) -> None:
    """The validator can fail: a tool part without its output, a role the SDK does not know."""
    assert ui_messages_error([], client_name) is not None
    text = {"type": "text", "text": "hi"}
    assert ui_messages_error([{"id": "1", "role": "robot", "parts": [text]}], client_name) is not None
    broken = {"type": "tool-calculate", "toolCallId": "c", "state": "output-available", "input": {}}
    if client_name != "ai5":  # ai 5's schema lets `output` be missing
        assert ui_messages_error([{"id": "1", "role": "assistant", "parts": [broken]}], client_name) is not None
    assert ui_messages_error([{"id": "1", "role": "user", "parts": [text]}], client_name) is None
