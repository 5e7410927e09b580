"""Redis cache of sessions and their messages, kept coherent with Postgres.

Postgres is the truth; the cache is only ever written from it, never the other way round. Three rules keep it
coherent:

- An append pushes just the new messages, and only if the cached list ends right before them; any other state
  (a gap, a reordering between two writers) drops the list, to be refilled from Postgres. O(new messages).
- Every write stamps a fresh random generation on the session in the same script (random, not a counter: a
  counter restarts after a Redis flush and could match an old value). A reader that missed the cache notes the
  generation before it reads Postgres and its fill only lands if the generation has not moved, so a slow reader
  can never install state older than a write that committed meanwhile.
- Updates of stored rows (title, summary, an edited message) drop what they touch instead of patching it.
- An append that added messages installs the session row its own transaction returned (new count and token totals),
  but only over a cached row with a lower message count: the count grows with every such append, so of two appends
  whose cache updates arrive in the opposite order of their commits the older one finds a higher count and leaves
  it. It never installs into a missing entry, which may have been dropped by a later rename or summary; the next
  read fills it. An append without messages (usage only) drops the entry instead.

Messages live in a list with a sentinel at index 0, so message `n` sits at index `n` and a page is one LRANGE.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from backend import keys, redis_batch
from backend.store.models import ChatMessage, ChatSession, MessageRow

_SENTINEL = b"-"
# The generation must outlive any fill in flight; a day is far beyond that and keeps Redis tidy.
_GENERATION_TTL_MS = 86_400_000
_FILL_BATCH = 1000

# KEYS: list, generation, meta. ARGV: first new sequence, TTL, generation TTL, generation, the session row after
# the append ('' when there is none to install) and its message count, the sequence after which to return the list
# once extended ('': return 1), then the new messages.
_APPEND = """
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
local cached = redis.call('GET', KEYS[3])
if cached then
  local count = nil
  if ARGV[5] ~= '' then
    local ok, row = pcall(cjson.decode, cached)
    if ok and type(row) == 'table' then count = tonumber(row['message_count']) end
  end
  if count == nil then
    redis.call('DEL', KEYS[3])
  elseif count < tonumber(ARGV[6]) then
    redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[2])
  end
end
if #ARGV < 8 then return 0 end
local n = redis.call('LLEN', KEYS[1])
if n == 0 then return 0 end
if n ~= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) return -1 end
for i = 8, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[7] == '' then return 1 end
return redis.call('LRANGE', KEYS[1], tonumber(ARGV[7]) + 1, -1)
"""

_INVALIDATE = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

_FILL_MESSAGES = """
local gen = redis.call('GET', KEYS[2]) or ''
if gen ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local batch = tonumber(ARGV[3])
for i = 4, #ARGV, batch do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + batch - 1, #ARGV)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_CREATED = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

_FILL_META = """
local gen = redis.call('GET', KEYS[2]) or ''
if gen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
return 1
"""


def _encode(value: Any) -> bytes:
    # asyncpg hands out its own UUID subclass, which orjson does not know; str() is its canonical form.
    return orjson.dumps(value, default=str)


def _new_generation() -> bytes:
    return secrets.token_bytes(12)


def _append_keys(session_id: UUID) -> list[str]:
    return [keys.session_messages(session_id), keys.session_generation(session_id), keys.session_meta(session_id)]


def _decode_message(data: bytes) -> ChatMessage:
    # Prompts read plain rows (`get_message_rows`); full messages are read for listings and compactions only.
    d = orjson.loads(data)
    d["id"] = UUID(d["id"])
    d["session_id"] = UUID(d["session_id"])
    d["created_at"] = datetime.fromisoformat(d["created_at"])
    return ChatMessage(**d)


def _decode_session(data: bytes | str) -> ChatSession:
    d = orjson.loads(data)
    d["id"] = UUID(d["id"])
    d["created_at"] = datetime.fromisoformat(d["created_at"])
    d["updated_at"] = datetime.fromisoformat(d["updated_at"])
    return ChatSession(**d)


class SessionCache:
    """Cached sessions and message lists. Every method is safe to call with Redis state of any age."""

    def __init__(self, redis: Redis, *, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl_ms = ttl_seconds * 1000
        self._append = redis.register_script(_APPEND)
        self._invalidate = redis.register_script(_INVALIDATE)
        self._fill_messages = redis.register_script(_FILL_MESSAGES)
        self._fill_meta = redis.register_script(_FILL_META)
        self._created = redis.register_script(_CREATED)

    async def generation(self, session_id: UUID) -> bytes:
        """Read before loading from Postgres; pass to `fill_*` afterwards."""
        generation = await self._redis.get(keys.session_generation(session_id))
        return generation.encode() if isinstance(generation, str) else generation or b""

    # --- reads ---------------------------------------------------------------------------------------
    async def get_session(self, session_id: UUID) -> ChatSession | None:
        data = await self._redis.get(keys.session_meta(session_id))
        return _decode_session(data) if data else None

    async def get_messages(self, session_id: UUID, after: int, limit: int | None) -> list[ChatMessage] | None:
        """Messages after sequence `after` (at most `limit`), or None when the session's list is not cached."""
        rows = await self._raw_messages(session_id, after, limit)
        return None if rows is None else [_decode_message(r) for r in rows]

    async def get_message_rows(self, session_id: UUID, after: int) -> list[MessageRow] | None:
        """Messages after sequence `after` as plain rows (one JSON parse each: no ids, timestamps or dataclasses
        built, which is most of what decoding a message costs), or None when the list is not cached."""
        rows = await self._raw_messages(session_id, after, None)
        return None if rows is None else [orjson.loads(r) for r in rows]

    def reading_message_rows(self, session_id: UUID, after: int) -> redis_batch.Group:
        """`get_message_rows` as a group of a batch sent with other Redis work; its reply is read with
        `message_rows_from`."""
        key = keys.session_messages(session_id)

        def read(pipe: Pipeline) -> None:
            pipe.exists(key)
            pipe.lrange(key, after + 1, -1)

        return redis_batch.Group(read)

    async def _raw_messages(self, session_id: UUID, after: int, limit: int | None) -> list[bytes] | None:
        key = keys.session_messages(session_id)
        stop = -1 if limit is None else after + limit
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(key)
            pipe.lrange(key, after + 1, stop)
            exists, rows = await pipe.execute()
        return rows if exists else None

    # --- fills after a miss --------------------------------------------------------------------------
    async def fill_session(self, session: ChatSession, generation: bytes) -> bool:
        keys_ = [keys.session_meta(session.id), keys.session_generation(session.id)]
        return bool(await self._fill_meta(keys=keys_, args=[generation, self._ttl_ms, _encode(session)]))

    async def fill_messages(self, session_id: UUID, messages: Sequence[ChatMessage], generation: bytes) -> bool:
        """Install the whole message list (every message of the session, in order) if nothing wrote meanwhile."""
        keys_ = [keys.session_messages(session_id), keys.session_generation(session_id)]
        args: list[Any] = [generation, self._ttl_ms, _FILL_BATCH, _SENTINEL]
        args.extend(_encode(m) for m in messages)
        return bool(await self._fill_messages(keys=keys_, args=args))

    # --- after a committed write ---------------------------------------------------------------------
    async def created(self, session: ChatSession) -> None:
        """A new session: cache it with its (empty) message list, so its first turn reads from Redis."""
        keys_ = [keys.session_meta(session.id), keys.session_messages(session.id), keys.session_generation(session.id)]
        await self._created(keys=keys_, args=[self._ttl_ms, _encode(session), _SENTINEL])

    async def appended(
        self,
        session_id: UUID,
        messages: Sequence[ChatMessage],
        session: ChatSession | None = None,
        *,
        read_after: int | None = None,
        along: Sequence[redis_batch.Group] = (),
    ) -> list[MessageRow] | None:
        """An append committed: `messages` were added (consecutive sequences, oldest first; none for a usage-only
        append) and `session` is the row the append's transaction returned (None: drop the cached row). `along`:
        Redis work of other slots sent after the update in the same round trip (`redis_batch.send`).

        With `read_after`, returns the cached messages after that sequence, new ones included, read in the same
        script (None when the list is not cached, or was dropped as out of step)."""
        keys_ = _append_keys(session_id)
        args = self._append_args(messages, session, read_after)
        if not along:
            reply = await self._append(keys=keys_, args=args)
        else:
            replies = await redis_batch.send(self._redis, self._append_group(keys_, args), *along)
            reply = replies[0][0]
        if read_after is None or not isinstance(reply, list):
            return None
        return [orjson.loads(r) for r in reply]

    def appended_later(
        self, session_id: UUID, messages: Sequence[ChatMessage], session: ChatSession | None
    ) -> redis_batch.Group:
        """`appended` as a group of a batch its caller sends (`redis_batch.send`); safe to send twice (a second
        update finds the list out of step and drops it)."""
        return self._append_group(_append_keys(session_id), self._append_args(messages, session, None))

    def _append_args(
        self, messages: Sequence[ChatMessage], session: ChatSession | None, read_after: int | None
    ) -> list[Any]:
        first = messages[0].sequence if messages else 0
        # Only an append that added messages raised the count, and the count is what orders the rows.
        row = session if messages and session is not None and session.message_count >= messages[-1].sequence else None
        args: list[Any] = [
            first,
            self._ttl_ms,
            _GENERATION_TTL_MS,
            _new_generation(),
            b"" if row is None else _encode(row),
            0 if row is None else row.message_count,
            b"" if read_after is None else read_after,
        ]
        args.extend(_encode(m) for m in messages)
        return args

    def _append_group(self, keys_: list[str], args: list[Any]) -> redis_batch.Group:
        def update(pipe: Pipeline) -> None:
            redis_batch.call(pipe, self._append, keys_, args)

        return redis_batch.Group(update, (self._append,))

    async def invalidate(self, session_id: UUID, *, messages: bool = False) -> None:
        """A stored row changed: drop the session entry (and the message list if a message changed)."""
        keys_ = [keys.session_generation(session_id), keys.session_meta(session_id)]
        if messages:
            keys_.append(keys.session_messages(session_id))
        await self._invalidate(keys=keys_, args=[_GENERATION_TTL_MS, _new_generation()])


def message_rows_from(reply: list[Any]) -> list[MessageRow] | None:
    """The rows a `reading_message_rows` group read (None when the session's list is not cached)."""
    exists, rows = reply
    return [orjson.loads(r) for r in rows] if exists else None
