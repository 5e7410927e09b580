"""Closing a turn whose owner died: end the message for its followers, keep the partial reply, free the session.

Any pod may do this once the owner's lease has expired. The registry's compare-and-set decides who closes the turn,
so the closing chunks (open parts ended, `error`, `finish`) are written exactly once, and only the winner stores
the partial reply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

from backend.chat import protocol as p
from backend.chat.open_parts import OpenParts
from backend.chat.tokens import TokenCounter
from backend.chat.turn import INTERRUPTED_MARK
from backend.store.models import NewMessage
from backend.store.sessions import SessionStore
from backend.streams.turns import TurnRegistry

log = logging.getLogger("copilot.recovery")


class SessionRelease(Protocol):
    """Frees the session of a turn that was just closed (the Redis pointer, or the pointer and its Postgres anchor)."""

    async def release(self, session_id: UUID, turn_id: str) -> object: ...


LOST_OWNER_TEXT = "The reply was interrupted because the server generating it stopped. Please try again."


def closing_chunks(chunks: Sequence[p.Chunk]) -> tuple[list[p.Chunk], str]:
    """What a stream that stopped after `chunks` needs to end properly (open text ended, open tool calls closed,
    the step finished, `error`, `finish`; nothing if its `finish` was written before the owner died), and the text
    of its unfinished step."""
    state = OpenParts()
    for chunk in chunks:
        state.feed(chunk)
    step_text = "".join(state.step_text)
    return state.closing(LOST_OWNER_TEXT), step_text


async def reap(
    turn_id: str, *, registry: TurnRegistry, store: SessionStore, active: SessionRelease, counter: TokenCounter
) -> bool:
    """Close `turn_id` as interrupted if it still runs; True if this call closed it."""
    info = await registry.info(turn_id)
    if info is None or info.status != "running":
        await registry.finish(turn_id, "interrupted")  # drops a stale lease entry; writes nothing
        return False
    chunks = [p.decode(raw) for raw in await registry.chunks(turn_id)]
    closing, partial = closing_chunks(chunks)
    if not await registry.finish(turn_id, "interrupted", [p.to_json(c) for c in closing]):
        return False
    session_id = UUID(info.session_id)
    log.warning("turn %s lost its owner; closed as interrupted", turn_id)
    if partial and not await _already_stored(store, session_id, partial):
        content = f"{partial}\n\n{INTERRUPTED_MARK}"
        message = NewMessage(
            "assistant", content, token_count=counter.count_message({"role": "assistant", "content": content})
        )
        await store.append(session_id, [message])
    await active.release(session_id, turn_id)
    return True


async def _already_stored(store: SessionStore, session_id: UUID, text: str) -> bool:
    """The owner stores a step before it publishes the step's end; it may have died in between."""
    session = await store.get_any(session_id)
    if session is None:
        return True
    recent = await store.messages(session_id, after=max(0, session.message_count - 20))
    for message in reversed(recent):
        if message.role == "user":
            return False
        if message.role == "assistant" and (message.content or "").startswith(text):
            return True
    return False
