"""`GET /api/chat/sessions/{id}/ui-messages`: a session's history as AI SDK `UIMessage`s for `useChat({ messages })`."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from redis.exceptions import RedisError

from backend.api.deps import Admission, OwnedSession, Sessions, SettingsDep
from backend.api.ui_messages_render import UIMessage, ui_messages
from backend.chat.turn_admission import continuation_id, turn_id_for
from backend.store.models import ChatMessage

log = logging.getLogger("copilot.api.ui_messages")

router = APIRouter(prefix="/api/chat/sessions", tags=["sessions"])

PAGE_SIZE = 500
"""Messages read from Postgres per query."""


@router.get("/{session_id}/ui-messages", response_model_by_alias=True)
async def get_ui_messages(
    session: OwnedSession, sessions: Sessions, admission: Admission, settings: SettingsDep
) -> list[UIMessage]:
    """The whole conversation of a session the caller owns as `UIMessage`s, oldest first. A reply still being
    generated is left out: `useChat`'s `resume: true` replays it from its start."""
    stored = [m async for page in sessions.stored_messages(session.id, page_size=PAGE_SIZE) for m in page]
    try:
        active = await admission.active_task(session.id)
    except RedisError:
        log.warning("Redis unavailable: the running reply of session %s, if any, is served as stored", session.id)
        active = None
    if active is not None and active[1] == "running":
        stored = _without_running_reply(stored, active[0])

    def reply_id(user: ChatMessage) -> str | None:
        # The stream's `messageId`, so the reply keeps the id a client saw while it streamed.
        return f"msg-{turn_id_for(session.id, user.client_message_id)}" if user.client_message_id else None

    return ui_messages(stored, reply_id, approvals=settings.ai_sdk_version >= 6)


def _without_running_reply(stored: list[ChatMessage], task_id: str) -> list[ChatMessage]:
    """The messages without those the running turn stored so far (its stream replays them). A turn that answers a
    user message claims the session in the transaction that stores the message, so the running turn's messages are
    the ones after the last user message, when the turn is that message's: its task id derives from the message's
    client id (a message sent without one cannot be checked, and is taken to be the turn's). A running continuation
    after answers (its task id derives from the asking message's sequence) leaves in what came before its start:
    the asking message and the answered calls. Another running turn is the continuation of a long-running tool; its
    steps are left in."""
    if (resumed := _continued_until(stored, task_id)) is not None:
        return stored[:resumed]
    last_user = next((i for i in range(len(stored) - 1, -1, -1) if stored[i].role == "user"), None)
    if last_user is None:
        return stored
    client_id = stored[last_user].client_message_id
    if client_id is not None and turn_id_for(stored[last_user].session_id, client_id) != task_id:
        return stored
    return stored[: last_user + 1]


def _continued_until(stored: list[ChatMessage], task_id: str) -> int | None:
    """When `task_id` is the continuation after answers to the calls of a stored message: the index just after that
    message's tool results (what the continuation stores comes after them). None otherwise."""
    for index, message in enumerate(stored):
        if message.role != "assistant" or not message.tool_calls:
            continue
        if continuation_id(message.session_id, message.sequence) != task_id:
            continue
        end = index + 1
        while end < len(stored) and stored[end].role == "tool":
            end += 1
        return end
    return None
