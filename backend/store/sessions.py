"""Sessions as the rest of the service sees them: Postgres behind a coherent Redis cache, ownership enforced.

Writes go to Postgres first and then tell the cache; reads try the cache and fill it on a miss. Redis being down
degrades to Postgres-only reads; it never fails a request that Postgres can serve. Postgres being down fails
requests with `StorageUnavailable` (503), except the writes that must not be lost (`append_or_keep`: a reply's
steps), which are kept in Redis and stored later, in order: every append and every tool-result update of a
session first stores what the session has pending, so nothing newer overtakes it (an append whose caller already
knows the session has none, `no_pending`, skips the check).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID

from redis.exceptions import RedisError

from backend.errors import NotFound, StorageUnavailable
from backend.redis_batch import Group
from backend.store.cache import SessionCache, message_rows_from
from backend.store.models import (
    ActiveTurnClaim,
    AppendResult,
    ChatMessage,
    ChatSession,
    MessageRow,
    ModelUsage,
    NewMessage,
)
from backend.store.pending import PendingAppend, PendingWrites
from backend.store.postgres import ChatRepository

__all__ = ["SessionStore", "message_rows_from"]

log = logging.getLogger("copilot.sessions")

_RETRY_FIRST_SECONDS = 0.2
_RETRY_MAX_SECONDS = 2.0
_LOCK_POLL_SECONDS = 0.05


class SessionStore:
    def __init__(self, repo: ChatRepository, cache: SessionCache, pending: PendingWrites | None = None) -> None:
        self._repo = repo
        self._cache = cache
        self._pending = pending
        """Where writes Postgres did not take wait for it (None: nothing is kept, the error goes to the caller)."""
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

    async def get_or_create(self, session_id: UUID, user_id: str) -> tuple[ChatSession, bool]:
        """The session `session_id` of `user_id`, created (untitled) when no session has that id, and whether this
        call created it; `NotFound` when it is another user's (a client that names its own session ids, like an
        AG-UI thread, must not learn of another user's)."""
        session = await self._cached_session(session_id)
        created = False
        if session is None:
            session, created = await self._repo.create_session_with_id(session_id, user_id)
            if created:
                try:
                    await self._cache.created(session)
                except RedisError:
                    log.warning("could not cache new session %s", session.id)
        if session.user_id != user_id:
            raise NotFound("session not found")
        return session, created

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
        settle_awaiting: bool = False,
        release: str | None = None,
        no_pending: bool = False,
        read_after: int | None = None,
        along: Sequence[Group] = (),
        cache_later: list[Group] | None = None,
    ) -> AppendResult:
        """Append messages (the caller has checked ownership). Idempotent per client message id and per write key.
        With `claim`, also claim the session's active turn in the same transaction (`ActiveTurnHeld` when it is
        taken). With `settle_awaiting` (a user message), calls still waiting for a person close as unanswered. With
        `release` (a turn id), that turn's claim is freed in the same transaction (the turn's last append).

        The session's pending writes are stored first; `no_pending`: the caller learnt that the session has none
        (the turn that holds the session, see `chat/session_admission.py`), and Redis is not asked again. `along`:
        Redis work of other slots to send in the round trip of the cache update (`sent_along` says whether it
        was: not when nothing new was written, nor when the update failed). `read_after`: the cache update also
        reads the messages after that sequence (`history`; a turn's prompt, without a read of its own).
        `cache_later`: the cache update of the new messages is not sent but added to this list, for the caller to
        send with other work (`redis_batch.send`); if that fails, the caller calls `messages_changed`.
        `StorageUnavailable` when Postgres does not answer (then nothing of this append is kept)."""
        if not no_pending:
            await self.store_pending(session_id)
        return await self._append_now(
            session_id,
            messages,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            claim=claim,
            settle_awaiting=settle_awaiting,
            release=release,
            read_after=read_after,
            along=along,
            cache_later=cache_later,
        )

    async def append_or_keep(
        self,
        session_id: UUID,
        messages: Sequence[NewMessage],
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        retry_seconds: float,
        release: str | None = None,
        no_pending: bool = False,
        cache_later: list[Group] | None = None,
    ) -> AppendResult | None:
        """Append what must not be lost (a step of a reply): while Postgres does not answer, retry with backoff for
        up to `retry_seconds`, then keep it in Redis and return None; the session's next append or the reconciler
        stores it once Postgres is back. A cancellation meanwhile keeps it too before it goes on.

        Every message needs a `write_key`: an attempt whose commit went through but whose answer was lost is then
        harmless to repeat, here or wherever the kept copy is stored. `release` (see `append`) rides on the attempts
        here only, never on the kept copy: when None is returned, the turn's claim is still to be freed.
        `no_pending`, `cache_later`: see `append`."""
        if any(m.write_key is None for m in messages):
            raise ValueError("append_or_keep needs a write key on every message")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_seconds
        delay = _RETRY_FIRST_SECONDS
        try:
            while True:
                try:
                    return await self.append(
                        session_id,
                        messages,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        release=release,
                        no_pending=no_pending,
                        cache_later=cache_later,
                    )
                except StorageUnavailable:
                    if self._pending is None:
                        raise
                    if loop.time() + delay > deadline:
                        break
                    level = logging.WARNING if delay == _RETRY_FIRST_SECONDS else logging.DEBUG
                    log.log(level, "storing to %s failed: Postgres unavailable; retrying in %.1fs", session_id, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_SECONDS)
        except asyncio.CancelledError:
            if self._pending is not None:
                await asyncio.shield(self._keep(session_id, messages, prompt_tokens, completion_tokens))
            raise
        await self._keep(session_id, messages, prompt_tokens, completion_tokens)
        return None

    async def store_pending(self, session_id: UUID, *, wait: bool = True) -> None:
        """Store the session's pending writes, oldest first; one EXISTS when there are none. A pod already doing it
        is waited for (`wait`, bounded by its lease) or left to it. `StorageUnavailable` if Postgres still does not
        answer: what is left stays pending."""
        if self._pending is None:
            return
        try:
            if not await self._pending.any(session_id):
                return
        except RedisError:
            log.warning("cannot tell whether %s has pending writes (Redis unavailable); going on", session_id)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._pending.lock_seconds + 1.0
        while (token := await self._pending.lock(session_id)) is None:
            if not wait:
                return
            if loop.time() > deadline:
                raise StorageUnavailable("The session's earlier reply is still being saved; please try again.")
            await asyncio.sleep(_LOCK_POLL_SECONDS)
        try:
            while (item := await self._pending.first(session_id)) is not None:
                raw, append = item
                try:
                    await self._append_now(
                        session_id,
                        append.messages,
                        prompt_tokens=append.prompt_tokens,
                        completion_tokens=append.completion_tokens,
                    )
                except NotFound:
                    log.warning("session %s was deleted; dropping its pending write", session_id)
                await self._pending.done(session_id, raw)
                log.info("stored a pending write of %s (%d messages)", session_id, len(append.messages))
            await self._pending.unlist_if_empty(session_id)
        finally:
            await self._pending.unlock(session_id, token)

    async def _keep(
        self, session_id: UUID, messages: Sequence[NewMessage], prompt_tokens: int, completion_tokens: int
    ) -> None:
        assert self._pending is not None
        await self._pending.keep(session_id, PendingAppend(tuple(messages), prompt_tokens, completion_tokens))
        log.warning("Postgres unavailable: kept a write to %s in Redis until it answers", session_id)

    async def _append_now(
        self,
        session_id: UUID,
        messages: Sequence[NewMessage],
        *,
        prompt_tokens: int,
        completion_tokens: int,
        claim: ActiveTurnClaim | None = None,
        settle_awaiting: bool = False,
        release: str | None = None,
        read_after: int | None = None,
        along: Sequence[Group] = (),
        cache_later: list[Group] | None = None,
    ) -> AppendResult:
        try:
            result = await self._repo.append_messages(
                session_id,
                messages,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                claim=claim,
                settle_awaiting=settle_awaiting,
                release=release,
            )
        except LookupError as e:
            raise NotFound("session not found") from e
        if result.repeated_keys or result.settled_awaiting:
            # An earlier attempt committed without telling its cache update: the cached list may lack its rows. (Or
            # rows already cached changed state: a list is dropped, never patched.)
            await self._after_write(session_id, messages=True)
            return result
        new = [
            stored
            for stored, given in zip(result.messages, messages, strict=True)
            if given.client_message_id not in result.duplicates
        ]
        if not new and not prompt_tokens and not completion_tokens:
            return result  # nothing was written (a resent message): the cache is still right
        if cache_later is not None:
            cache_later.append(self._cache.appended_later(session_id, new, result.session))
            return result
        try:
            history = await self._cache.appended(session_id, new, result.session, read_after=read_after, along=along)
        except RedisError:
            log.warning("cache update failed after append to %s; repairing in background", session_id)
            self._repair_later(session_id)
            return result
        return replace(result, sent_along=bool(along), history=history) if along or history is not None else result

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
        list is dropped, never patched). The session's pending writes, which may hold that message, go first."""
        await self.store_pending(session_id)
        message = await self._repo.replace_tool_result(session_id, tool_call_id, content, token_count)
        if message is not None:
            await self._after_write(session_id, messages=True)
        return message

    async def usage_by_model(self, session_id: UUID) -> list[ModelUsage]:
        """The usage stored with the session's assistant messages, summed per model (the caller has checked
        ownership). Read from Postgres: a report, not a hot path."""
        return await self._repo.usage_by_model(session_id)

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

    async def stored_messages(self, session_id: UUID, *, page_size: int = 500) -> AsyncIterator[list[ChatMessage]]:
        """Every message of a session, oldest first, read from Postgres in pages of `page_size` (the caller has
        checked ownership). Not through the cache: a whole long conversation is read once (an export), and filling
        the cache would hold all of it in memory at once."""
        after = 0
        while True:
            page = await self._repo.get_messages(session_id, after=after, limit=page_size)
            if page:
                yield page
            if len(page) < page_size:
                return
            after = page[-1].sequence

    def reading_message_rows(self, session_id: UUID, *, after: int) -> Group:
        """The cached messages after sequence `after`, as plain rows, read as a group of a batch sent with other
        Redis work (`redis_batch.send`); its reply is read with `cache.message_rows_from` (None: not cached)."""
        return self._cache.reading_message_rows(session_id, after)

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

    async def messages_changed(self, session_id: UUID) -> None:
        """Tell the cache that stored messages of the session changed in place (its list is dropped)."""
        await self._after_write(session_id, messages=True)

    async def ping(self) -> None:
        await self._repo.ping()
