"""`backend/api/ui_messages_render.py` on stored rows, without a server: what a settled approval looks like in the
history (the real client's view of the same flows is checked in tests/conformance/test_human_in_the_loop.py)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from itertools import count
from typing import Any

from backend.api.ui_messages_render import ui_messages
from backend.chat.human_input import DENIED_TEXT, denial_reason, denial_text
from backend.store.models import AwaitingState, ChatMessage

SESSION = uuid.uuid4()
_sequence = count()


def row(role: str, content: str | None = None, **fields: Any) -> ChatMessage:
    values: dict[str, Any] = {
        "tool_calls": None,
        "tool_call_id": None,
        "name": None,
        "refusal": None,
        "client_message_id": None,
        **fields,
    }
    return ChatMessage(
        id=uuid.uuid4(),
        session_id=SESSION,
        sequence=next(_sequence),
        role=role,  # type: ignore[arg-type]
        content=content,
        token_count=1,
        created_at=datetime.now(UTC),
        **values,
    )


def calls(*names: str) -> ChatMessage:
    specs = [{"id": f"call_{n}", "type": "function", "function": {"name": n, "arguments": "{}"}} for n in names]
    return row("assistant", None, tool_calls=specs)


def result(name: str, content: str, state: AwaitingState) -> ChatMessage:
    return row("tool", content, tool_call_id=f"call_{name}", name=name, awaiting="approval", awaiting_state=state)


def denied(reason: str | None) -> str:
    return json.dumps({"error": {"type": "denied", "message": denial_text(reason)}})


def reply_parts(*stored: ChatMessage, approvals: bool = True) -> list[dict[str, Any]]:
    history = ui_messages([row("user", "go", client_message_id="u-1"), *stored], lambda _: "r-1", approvals=approvals)
    parts: list[dict[str, Any]] = history[1].model_dump(by_alias=True)["parts"]
    return parts


def test_an_approved_call_that_ran_keeps_its_approval() -> None:
    ran = result("calculate", '{"result": 42}', "answered")
    failed = result("delete", '{"error": {"type": "tool_error", "message": "no"}}', "failed")
    _, answered, errored = reply_parts(calls("calculate", "delete"), ran, failed)
    assert answered["state"] == "output-available"
    assert answered["approval"] == {"id": "approval-call_calculate", "approved": True}
    assert errored["state"] == "output-error"
    assert errored["approval"] == {"id": "approval-call_delete", "approved": True}


def test_a_denied_call_keeps_the_reason_given() -> None:
    _, with_reason, without = reply_parts(
        calls("calculate", "delete"),
        result("calculate", denied("not now"), "denied"),
        result("delete", denied(None), "denied"),
    )
    assert with_reason["approval"] == {"id": "approval-call_calculate", "approved": False, "reason": "not now"}
    assert without["approval"] == {"id": "approval-call_delete", "approved": False}


def test_ai5_sees_the_approval_requests_after_the_steps_calls_as_its_stream_sent_them() -> None:
    parts = reply_parts(
        calls("calculate", "delete"),
        result("calculate", '{"result": 42}', "answered"),
        result("delete", denied(None), "denied"),
        row("assistant", "done"),
        approvals=False,
    )
    assert [p["type"] for p in parts] == [
        "step-start",
        "tool-calculate",
        "tool-delete",
        "data-tool-approval-request",
        "data-tool-approval-request",
        "step-start",
        "text",
    ]
    assert "approval" not in parts[1] and parts[2]["state"] == "output-error"
    assert parts[3] == {
        "type": "data-tool-approval-request",
        "id": "approval-call_calculate",
        "data": {
            "approvalId": "approval-call_calculate",
            "toolCallId": "call_calculate",
            "toolName": "calculate",
            "input": {},
        },
    }
    assert parts[4]["data"]["toolCallId"] == "call_delete"


def test_the_reason_is_read_back_only_from_a_denial() -> None:
    assert denial_reason(denial_text("not now")) == "not now"
    assert denial_reason(denial_text(None)) is None
    assert denial_reason(DENIED_TEXT) is None
    assert denial_reason("Reason: not now") is None
