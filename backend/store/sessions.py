"""Sessions as the rest of the service sees them: Postgres behind a coherent Redis cache, ownership enforced.

Writes go to Postgres first and then tell the cache; reads try the cache and fill it on a miss. Redis being down
degrades to Postgres-only reads; it never fails a request that Postgres can serve.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from redis.exceptions import RedisError

from backend.errors import NotFound
from backend.store.cache import SessionCache
from backend.store.models import ActiveTurnClaim, AppendResult, ChatMessage, ChatSession, MessageRow, NewMessage
from backend.store.postgres import ChatRepository

log = logging.getLogger("copilot.sessions")


class SessionStore:
    def __init__(self, repo: ChatRepository, cache: SessionCache) -> None:
        self._repo = repo
        self._cache = cache
        # Cache corrections that failed because Redis was unreachable; retried so a blip cannot leave a stale
        # list behind for a whole TTL. Strong references keep the tasks alive.
        self._repairs: set[asyncio.Task[None]] = set()

    # --- sessions ------------------------------------------------------------------------------------
    async def create(
        self, user_id: str, *, title: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ChatSession:
        session = await self._repo.create_session(user_id, title=title, metadata=metadata)
        try:
            await self._cache.created(session)
        except RedisError:
            log.warning("could not cache new session %s", session.id)
        return session

    async def get(self, session_id: UUID, user_id: str) -> ChatSession:
        """The session if `user_id` owns it; `NotFound` otherwise (another user's session looks missing)."""
        session = await self._cached_session(session_id)
        if session is None or session.user_id != user_id:
            raise NotFound("session not found")
        return session

    async def get_any(self, session_id: UUID) -> ChatSession | None:
        """The session whoever owns it (for internal recovery work, never for answering a request)."""
        return await self._cached_session(session_id)

    async def list_for_user(
        self, user_id: str, *, limit: int, before: tuple[datetime, UUID] | None = None
    ) -> list[ChatSession]:
        return await self._repo.list_sessions(user_id, limit=limit, before=before)

    async def rename(self, session_id: UUID, user_id: str, title: str | None) -> ChatSession:
        session = await self._repo.update_title(session_id, user_id, title)
        if session is None:
            raise NotFound("session not found")
        await self._after_write(session_id, messages=False)
        return session

    async def delete(self, session_id: UUID, user_id: str) -> None:
        if not await self._repo.delete_session(session_id, user_id):
            raise NotFound("session not found")
        await self._after_write(session_id, messages=True)

    # --- messages ------------------------------------------------------------------------------------
    async def append(
        self,
        session_id: UUID,
        messages: Sequence[NewMessage],
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        claim: ActiveTurnClaim | None = None,
    ) -> AppendResult:
        """Append messages (the caller has checked ownership). Idempotent per client message id. With `claim`,
        also claim the session's active turn in the same transaction (`ActiveTurnHeld` when it is taken)."""
        try:
            result = await self._repo.append_messages(
                session_id, messages, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, claim=claim
            )
        except LookupError as e:
            raise NotFound("session not found") from e
        new = [m for m in result.messages if m.client_message_id not in result.duplicates]
        if not new and not prompt_tokens and not completion_tokens:
            return result  # nothing was written (a resent message): the cache is still right
        try:
            await self._cache.appended(session_id, new, result.session)
        except RedisError:
            log.warning("cache update failed after append to %s; repairing in background", session_id)
            self._repair_later(session_id)
        return result

    async def commit_summary(
        self, session_id: UUID, *, expected_through: int, through: int, summary: str, summary_tokens: int
    ) -> ChatSession | None:
        """Store a new rolling summary unless another writer moved it first (then None)."""
        session = await self._repo.commit_summary(
            session_id,
            expected_through=expected_through,
            through=through,
            summary=summary,
            summary_tokens=summary_tokens,
        )
        if session is not None:
            await self._after_write(session_id, messages=False)
        return session

    async def replace_tool_result(
        self, session_id: UUID, tool_call_id: str, content: str, *, token_count: int
    ) -> ChatMessage | None:
        """Put a long-running operation's result in place of its pending tool message (an update: the cached
        list is dropped, never patched)."""
        message = await self._repo.replace_tool_result(session_id, tool_call_id, content, token_count)
        if message is not None:
            await self._after_write(session_id, messages=True)
        return message

    async def messages(self, session_id: UUID, *, after: int = 0, limit: int | None = None) -> list[ChatMessage]:
        """Messages with sequence > `after`, oldest first (the caller has checked ownership)."""
        try:
            cached = await self._cache.get_messages(session_id, after, limit)
            if cached is not None:
                return cached
            generation = await self._cache.generation(session_id)
        except RedisError:
            log.warning("cache unavailable; reading messages of %s from Postgres", session_id)
            return await self._repo.get_messages(session_id, after=after, limit=limit)
        everything = await self._repo.get_messages(session_id)
        try:
            await self._cache.fill_messages(session_id, everything, generation)
        except RedisError:
            log.warning("cache fill failed for %s", session_id)
        page = [m for m in everything if m.sequence > after]
        return page if limit is None else page[:limit]

    async def message_rows(self, session_id: UUID, *, after: int = 0) -> list[MessageRow]:
        """`messages(session_id, after=after)` as plain rows: the cheap read a prompt is built from."""
        try:
            rows = await self._cache.get_message_rows(session_id, after)
        except RedisError:
            rows = None  # `messages` logs it and reads Postgres
        if rows is not None:
            return rows
        return [m.row() for m in await self.messages(session_id, after=after)]

    # --- internals -----------------------------------------------------------------------------------
    async def _cached_session(self, session_id: UUID) -> ChatSession | None:
        try:
            session = await self._cache.get_session(session_id)
            if session is not None:
                return session
            generation = await self._cache.generation(session_id)
        except RedisError:
            log.warning("cache unavailable; reading session %s from Postgres", session_id)
            return await self._repo.get_session(session_id)
        session = await self._repo.get_session(session_id)
        if session is not None:
            try:
                await self._cache.fill_session(session, generation)
            except RedisError:
                log.warning("cache fill failed for session %s", session_id)
        return session

    async def _after_write(self, session_id: UUID, *, messages: bool) -> None:
        try:
            await self._cache.invalidate(session_id, messages=messages)
        except RedisError:
            log.warning("cache invalidation failed for %s; repairing in background", session_id)
            self._repair_later(session_id)

    def _repair_later(self, session_id: UUID) -> None:
        task = asyncio.create_task(self._repair(session_id))
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _repair(self, session_id: UUID) -> None:
        delay = 0.5
        while True:
            try:
                await self._cache.invalidate(session_id, messages=True)
                return
            except RedisError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        for task in self._repairs:
            task.cancel()
        await asyncio.gather(*self._repairs, return_exceptions=True)

    async def ping(self) -> None:
        await self._repo.ping()
