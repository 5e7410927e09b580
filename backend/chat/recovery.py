"""Closing a turn whose owner died: end the message for its followers, keep the partial reply, free the session.

Any pod may do this once the owner's lease has expired. The registry's compare-and-set decides who closes the turn,
so the closing chunks (open parts ended, `error`, `finish`) are written exactly once, and only the winner stores
the partial reply.

What is kept is what the turn's Redis Stream holds: the longest prefix any follower can replay. The stored partial
is the text of the stream's last step, under that step's write key, so a step the owner stored (or kept in Redis
while Postgres was down) before it died is not stored a second time. Followers on the owner's pod read from its
memory and may have been shown more than reached Redis (up to one publish window); a client that reconnects with
a cursor past the kept entries is told, in the `error` chunk, that the rest of what it saw was not kept.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol
from uuid import UUID

from redis.exceptions import RedisError

from backend.chat import protocol as p
from backend.chat.open_parts import OpenParts
from backend.chat.tokens import TokenCounter
from backend.chat.turn_state import INTERRUPTED_MARK, step_key
from backend.errors import NotFound
from backend.store.models import NewMessage
from backend.store.sessions import SessionStore
from backend.streams.turns import TurnRegistry, closer_entry_ids, is_owners_entry

log = logging.getLogger("copilot.recovery")


class SessionRelease(Protocol):
    """Frees the session of a turn that was just closed (the Redis pointer, or the pointer and its Postgres anchor)."""

    async def release(self, session_id: UUID, turn_id: str) -> object: ...


LOST_OWNER_TEXT = "interrupted: the server generating this reply stopped before it finished. Please try again."

LOST_TAIL_TEXT = (
    "interrupted: the server generating this reply stopped before it finished, and the last part of the text you "
    "were shown was not kept. The reply is saved as far as it was kept; please try again."
)
"""The `error` a reconnecting client gets instead of `LOST_OWNER_TEXT` when it had been shown more than was kept."""


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
    ids = closer_entry_ids(turn_id, len(closing))
    if not await registry.finish(turn_id, "interrupted", [p.to_json(c) for c in closing], ids=ids):
        return False
    session_id = UUID(info.session_id)
    log.warning("turn %s lost its owner; closed as interrupted", turn_id)
    content = f"{partial}\n\n{INTERRUPTED_MARK}" if partial else INTERRUPTED_MARK
    message = NewMessage(
        "assistant",
        content,
        token_count=counter.count_message({"role": "assistant", "content": content}),
        # The owner stores a step before it publishes the step's end, and may have died in between: then this key
        # is stored already and nothing is written.
        write_key=step_key(turn_id, _last_step(chunks), 0),
    )
    try:
        # Not retried here (Postgres down: kept in Redis at once), so the session is freed without delay.
        await store.append_or_keep(session_id, [message], retry_seconds=0.0)
    except NotFound:
        log.info("turn %s: its session was deleted; nothing to keep", turn_id)
    await active.release(session_id, turn_id)
    return True


def _last_step(chunks: Sequence[p.Chunk]) -> int:
    """Index of the last step the stream shows started (the turn counts its steps the same way)."""
    return max(0, sum(isinstance(c, p.StartStep) for c in chunks) - 1)


async def explain_lost_tail(
    entries: AsyncIterator[tuple[str, bytes | None]], *, turn_id: str, after: str, registry: TurnRegistry
) -> AsyncIterator[tuple[str, bytes | None]]:
    """`entries` of a follower that starts after cursor `after`, for a client that may have been shown more of the
    turn than its stream kept (it followed the owner's memory, and the owner died).

    Entries the owner wrote have the ids it chose (`<base>-1`, `<base>-2`, ...); whoever closed the turn in its
    place wrote under the next base up (`closer_entry_ids`). On the first of those, a cursor of the owner's that
    the stream does not hold means the client saw entries that were never kept. It then gets the `error` with
    `LOST_TAIL_TEXT` and the `finish` (and the `data-error` part before them), but not the chunks that end the parts
    still open in the kept prefix: those are not the parts it has open.
    """
    cursor = after
    lost: bool | None = None
    async for entry_id, payload in entries:
        # Entries without an id close a stream the follower lost itself: nothing was written, nothing to explain.
        if payload is not None and entry_id and not is_owners_entry(turn_id, entry_id):
            if lost is None:
                lost = is_owners_entry(turn_id, cursor) and not await _holds(registry, turn_id, cursor)
                if lost:
                    log.info("turn %s: a client at %s had been shown entries that were not kept", turn_id, cursor)
            if lost:
                chunk = p.decode(payload)
                if isinstance(chunk, p.Error):
                    payload = p.to_json(p.Error(error_text=LOST_TAIL_TEXT))
                elif not isinstance(chunk, p.Finish) and not _is_error_part(chunk):
                    continue
        elif entry_id:
            cursor = entry_id
        yield entry_id, payload


async def _holds(registry: TurnRegistry, turn_id: str, cursor: str) -> bool:
    """Whether the stream holds `cursor`; True (nothing to explain) when Redis cannot tell."""
    try:
        return await registry.holds(turn_id, cursor)
    except RedisError:
        log.warning("turn %s: cannot tell whether a reconnecting client saw more than was kept", turn_id)
        return True


def _is_error_part(chunk: p.Chunk) -> bool:
    return isinstance(chunk, p.DataPart) and chunk.type == "data-error"
