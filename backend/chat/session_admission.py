"""One turn per session, whatever happens to Redis: the session's active turn, Redis in front, Postgres behind.

The Redis pointer (`streams/active.py`, `SET NX`) is the fast path: a message sent while a turn runs is refused
without a Postgres round trip, and cancel and double texting read it. Postgres (`store/active_turns.py`) decides:
a turn with a user message claims the session in the transaction that stores the message (`claim` is handed to
`SessionStore.append`), a continuation with one statement, and either claim fails while another turn's lease is
live. So when Redis is flushed or restarts without its data, the next message still finds the session busy.

The Postgres lease is renewed by the owner pod in one statement per tick for all its turns, cleared by the turn's
end (compare-and-set on its id: in the append of its last step, `SessionStore.append(release=...)`, or with
`release_anchor` when it ended otherwise), and cleared by whoever reaps a turn whose owner stopped renewing it.

The Redis claim also says whether the session has writes waiting for Postgres (`store/pending.py`). While a turn
holds the session, only that turn keeps writes of it for later (whoever closes a dead owner's turn keeps its partial
reply before freeing the session), so the turn's appends skip that check until one of its own steps was kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from backend.redis_batch import Group
from backend.store.active_turns import ActiveTurnStore
from backend.store.models import ActiveTurnClaim
from backend.streams.active import ActiveTurns, Claim

log = logging.getLogger("copilot.admission")


class SessionAdmission:
    def __init__(self, fast: ActiveTurns, anchors: ActiveTurnStore, *, lease_seconds: float) -> None:
        self._fast = fast
        self._anchors = anchors
        self.lease_seconds = lease_seconds

    def claim(self, turn_id: str) -> ActiveTurnClaim:
        """What an append of the turn's user message takes to claim the session in its own transaction."""
        return ActiveTurnClaim(turn_id, self.lease_seconds)

    async def claim_fast(self, session_id: UUID, turn_id: str) -> Claim | None:
        """Claim the Redis pointer (the first step; Postgres decides when the message is stored); None when another
        turn holds it."""
        return await self._fast.claim(session_id, turn_id)

    async def claim_fast_along(
        self, session_id: UUID, turn_id: str, along: Sequence[Group]
    ) -> tuple[Claim | None, list[list[Any]]]:
        """`claim_fast` in the same round trip as the reads of `along`; the claim and their replies."""
        return await self._fast.claim_along(session_id, turn_id, along)

    async def drop_fast(self, session_id: UUID, turn_id: str) -> None:
        """Give the Redis pointer back after Postgres refused the claim (or before anything was stored)."""
        await self._fast.release(session_id, turn_id)

    def queue_drop_fast(self, session_id: UUID, turn_id: str) -> Group:
        """`drop_fast` as a group of a batch sent with other Redis work (`redis_batch.send`)."""
        return self._fast.queue_release(session_id, turn_id)

    async def claim_anchor(self, session_id: UUID, turn_id: str) -> str | None:
        """Claim the session in Postgres for a turn without a user message: None when claimed, else the turn that
        holds it (possibly `turn_id` itself, running on another pod)."""
        holder = await self._anchors.claim(session_id, turn_id, lease_seconds=self.lease_seconds)
        return None if holder is None else holder.turn_id

    async def current(self, session_id: UUID) -> str | None:
        """The session's running turn: the Redis pointer, or, when Redis has none (flushed), Postgres' holder."""
        turn_id = await self._fast.current(session_id)
        if turn_id is not None:
            return turn_id
        holder = await self._anchors.holder(session_id)
        return holder.turn_id if holder is not None else None

    async def current_fast(self, session_id: UUID) -> str | None:
        """The Redis pointer alone (for reads that only inform, such as the session's `active_task`)."""
        return await self._fast.current(session_id)

    async def anchor_lapsed(self, session_id: UUID, turn_id: str) -> bool:
        """Whether `turn_id` holds the session in Postgres under a lease its owner stopped renewing."""
        holder = await self._anchors.holder(session_id)
        return holder is not None and holder.turn_id == turn_id and holder.lapsed

    async def release(self, session_id: UUID, turn_id: str) -> None:
        """The turn ended: free the session in Postgres, then the Redis pointer (both only if `turn_id` holds them).
        Postgres goes first, so whoever sees the pointer gone finds the session free there as well."""
        try:
            await self._anchors.release(session_id, turn_id)
        finally:
            await self._fast.release(session_id, turn_id)

    async def release_anchor(self, session_id: UUID, turn_id: str) -> None:
        """Free the session in Postgres only (if `turn_id` holds it); the Redis pointer is dropped separately."""
        await self._anchors.release(session_id, turn_id)

    async def release_lapsed(self, session_id: UUID, turn_id: str) -> bool:
        """Free the session of a turn being reaped, unless its owner still renews its Postgres lease (then the turn
        is alive, and keeps the session). True when the session no longer belongs to `turn_id`."""
        if not await self._anchors.release_lapsed(session_id, turn_id):
            return False
        await self._fast.release(session_id, turn_id)
        return True

    async def renew(self, turns: Mapping[str, UUID]) -> set[str]:
        """Push the Postgres leases of this pod's turns (turn id → session id) forward in one statement; returns the
        ones that still hold their session."""
        return await self._anchors.renew(turns, lease_seconds=self.lease_seconds)

    async def lapsed(self) -> list[tuple[UUID, str]]:
        """(session id, turn id) of turns whose owner stopped renewing their Postgres lease."""
        return await self._anchors.lapsed()

    def for_reaping(self) -> LapsedRelease:
        """What `chat.recovery.reap` frees once it closed a turn: see `release_lapsed`."""
        return LapsedRelease(self)


class LapsedRelease:
    def __init__(self, admission: SessionAdmission) -> None:
        self._admission = admission

    async def release(self, session_id: UUID, turn_id: str) -> bool:
        freed = await self._admission.release_lapsed(session_id, turn_id)
        if not freed:
            # Its owner renewed Postgres but not Redis (or the clocks disagree): the session is freed once the
            # Postgres lease lapses too, by whoever finds it lapsed.
            log.info("turn %s was closed; its session stays held until its Postgres lease lapses", turn_id)
        return freed
