"""Storing the writes kept in Redis while Postgres was down, on whichever pod gets there first.

Every pod runs `Reconciler.run_once` every few seconds. It walks the sessions listed as having pending writes and
stores each session's writes in order (`SessionStore.store_pending`), one pod per session at a time; a session
another pod is already storing is skipped. A round stops at the first sign that Postgres is still down and the
next round tries again, so a long outage costs one failed connection attempt per round, not one per session.
Nothing else is needed for the writes of a session that gets a new message first: its append stores them itself.
"""

from __future__ import annotations

import logging

from backend.errors import StorageUnavailable
from backend.store.pending import PendingWrites
from backend.store.sessions import SessionStore

log = logging.getLogger("copilot.reconciler")


class Reconciler:
    def __init__(self, store: SessionStore, pending: PendingWrites, *, batch: int = 100) -> None:
        self._store = store
        self._pending = pending
        self._batch = batch

    async def run_once(self) -> None:
        """One round over the sessions with pending writes (at most `batch` of them, those waiting longest first)."""
        for session_id in await self._pending.sessions(limit=self._batch):
            try:
                await self._store.store_pending(session_id, wait=False)
            except StorageUnavailable:
                log.info("Postgres still unavailable; pending writes wait for the next round")
                break
            except Exception:
                # One session's failure (a bug, a write Postgres refuses) must not hold up the others behind it.
                log.exception("storing the pending writes of session %s failed", session_id)
                continue
            if not await self._pending.any(session_id):
                await self._pending.unlist_if_empty(session_id)  # also after a pod died between the two steps
