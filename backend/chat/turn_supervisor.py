"""The supervisor of this pod's turns: it renews their leases, passes on stop requests made on other pods, and closes
turns whose owner died.

One loop per pod. Every `_STOP_POLL_SECONDS` it asks Redis for stop requests of its quiet turns (a turn that wrote
lately learnt of one from that write); every third of a lease it renews the Postgres and Redis leases of its turns,
frees the sessions of ended turns Postgres could not free at the time, and closes the turns of dead pods. A lapsed
lease counts as a dead owner only once this pod has seen it lapsed for a while with Redis answering (`LapseWatch`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable

from redis.exceptions import RedisError

from backend.cancellation import check_cancelled
from backend.chat.lapses import LapseWatch
from backend.chat.local_turns import LocalTurns
from backend.chat.recovery import reap
from backend.chat.session_admission import SessionAdmission
from backend.chat.tokens import TokenCounter
from backend.store.sessions import SessionStore
from backend.streams.turns import TurnRegistry

log = logging.getLogger("copilot.supervisor")

_STOP_POLL_SECONDS = 0.25


class TurnSupervisor:
    def __init__(
        self,
        local: LocalTurns,
        *,
        registry: TurnRegistry,
        active: SessionAdmission,
        store: SessionStore,
        counter: TokenCounter,
    ) -> None:
        self._local = local
        self._registry = registry
        self._active = active
        self._store = store
        self._counter = counter
        # Two of an owner's renewal periods: after Redis was away, a live owner renews within that time.
        self._lapses = LapseWatch(grace_seconds=registry.lease_seconds * 2 / 3)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="turn-supervisor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def owner_gone(self, turn_id: str, session_id: uuid.UUID | None = None) -> bool:
        """The turn's owner stopped renewing it, as this pod has seen for a while (see `LapseWatch`): its Redis
        lease says so, or, when Redis knows no lease for it (a flush), its Postgres lease does (given
        `session_id`; without it, a turn Redis holds no lease for is taken as not leased yet)."""
        try:
            deadline = await self._registry.lease_deadline(turn_id)
        except RedisError:
            self._lapses.reset()
            raise
        if deadline is not None:
            lapsed = deadline < time.time()
        elif session_id is not None:
            lapsed = await self._active.anchor_lapsed(session_id, turn_id)
        else:
            lapsed = False
        return self._lapses.confirmed(turn_id, lapsed)

    async def reap(self, turn_id: str, session_id: uuid.UUID | None = None) -> None:
        """Close a turn whose owner died and free its session. With `session_id` (a turn found through its
        Postgres lease), the session is freed even when Redis no longer knows the turn."""
        self._lapses.forget(turn_id)
        closed = await reap(
            turn_id,
            registry=self._registry,
            store=self._store,
            active=self._active.for_reaping(),
            counter=self._counter,
        )
        if not closed and session_id is not None and await self._active.release_lapsed(session_id, turn_id):
            log.warning("turn %s lost its owner and Redis lost its stream; its session is free again", turn_id)

    async def reap_if_owner_gone(self, turn_id: str, session_id: uuid.UUID | None = None) -> bool:
        """Close the turn if its owner is gone (see `owner_gone`); True if this call found it so."""
        if not await self.owner_gone(turn_id, session_id):
            return False
        await self.reap(turn_id, session_id)
        return True

    async def reap_expired(self) -> None:
        """Close turns whose owner stopped renewing: listed by their Redis lease, and (what a Redis flush cannot
        hide) by their Postgres lease."""
        self._lapses.prune()
        try:
            expired = await self._registry.expired()
        except RedisError:
            self._lapses.reset()
            raise
        for turn_id in expired:
            if turn_id not in self._local.tasks and self._lapses.confirmed(turn_id, True):
                await self.reap(turn_id)
        for session_id, turn_id in await self._active.lapsed():
            # A turn whose Redis lease is still fresh has a live owner (only Postgres was out of its reach).
            if turn_id not in self._local.tasks:
                await self.reap_if_owner_gone(turn_id, session_id)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = self._registry.lease_seconds / 3
        next_renewal = 0.0
        while True:
            check_cancelled()
            await asyncio.sleep(_STOP_POLL_SECONDS)
            await self._guarded("polling stop requests", self._pass_on_stop_requests())
            if loop.time() >= next_renewal:
                next_renewal = loop.time() + renew_every
                # Each step on its own: Redis being away must not keep the Postgres leases from being renewed.
                # Postgres first, so a turn's Redis lease never lapses before its Postgres one: whoever closes a turn
                # when its Redis lease lapsed can free its session at once.
                await self._guarded("renewing leases in Postgres", self._renew_anchors())
                await self._guarded("freeing ended turns' sessions in Postgres", self._release_ended())
                await self._guarded("renewing leases in Redis", self._registry.renew(self._local.tasks))
                await self._guarded("closing turns of dead pods", self.reap_expired())

    async def _pass_on_stop_requests(self) -> None:
        # A turn that wrote to Redis lately learnt of a stop request from that write; ask for the others.
        quiet_since = asyncio.get_running_loop().time() - _STOP_POLL_SECONDS
        quiet = [turn_id for turn_id, pub in self._local.publishers.items() if pub.last_write < quiet_since]
        for turn_id in await self._registry.cancel_requested(quiet):
            self._local.stop(turn_id)

    async def _renew_anchors(self) -> None:
        anchored = dict(self._local.anchored)
        held = await self._active.renew(anchored)
        for turn_id in anchored.keys() - held:
            if turn_id in self._local.anchored:  # not ended meanwhile
                log.warning("turn %s no longer holds its session in Postgres (its lease lapsed)", turn_id)

    async def _release_ended(self) -> None:
        for turn_id, session_id in list(self._local.unreleased.items()):
            await self._active.release_anchor(session_id, turn_id)
            self._local.unreleased.pop(turn_id, None)

    async def _guarded(self, what: str, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            log.exception("turn supervisor: %s failed", what)
