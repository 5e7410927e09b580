"""Per-user abuse limits shared by all pods: requests per minute, concurrent turns, model tokens per UTC day.

Every count lives in Redis under keys hash-tagged per user (`keys.user_*`), so all pods see the same numbers and a
Redis Cluster keeps one user's keys on one slot; each check is one Lua script, atomic across pods.

- Requests: a sliding-window log (a sorted set of the last minute's requests). A refused request is not logged,
  so a client that waits `Retry-After` gets through.
- Concurrent turns: a sorted set of the user's running turns scored by a lease deadline. The pod that admitted a
  turn renews its lease (`renew`, every third of the lease) until the turn gives its slot back; a slot whose pod
  died lapses after one lease and stops counting. Admitting the same turn id again keeps its one slot.
- Tokens: one counter per user and UTC day, increased as usage arrives from the provider (`spend`) and compared
  when a turn is admitted, so a running turn is never cut off (the turn that crosses the budget finishes).

The limits fail open: when Redis cannot be reached a check logs a warning and lets the request through; a limit
must never turn into an outage of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from backend import keys, redis_batch
from backend.auth import Principal
from backend.errors import RateLimited
from backend.redis_batch import Group

log = logging.getLogger("copilot.limits")

T = TypeVar("T")

_WINDOW_MS = 60_000
_BUSY_RETRY_SECONDS = 5
"""`Retry-After` when all of a user's turn slots are taken: when a reply ends is unknown, replies take seconds."""
_TOKENS_TTL_SECONDS = 2 * 86_400
_WARN_EVERY_SECONDS = 10.0

_COUNT_REQUEST = """
local now, window, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= most then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""
"""0 when the request is counted, else the milliseconds until the oldest request of the window leaves it."""

_ADMIT = """
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local most, budget, enforce = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
if enforce and budget > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= budget then return 1 end
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if enforce and not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= most then
    return 2
  end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lease * 2)
end
return 0
"""
"""0 admitted (the turn holds a slot when slots are counted), 1 the day's tokens are spent, 2 every slot is taken."""

_ADMITTED, _NO_TOKENS, _NO_SLOT = 0, 1, 2


class UserLimits:
    """The per-user limits of this pod; 0 turns a limit off. Implements the turns' `TurnQuota` port."""

    def __init__(
        self,
        redis: Redis,
        *,
        requests_per_minute: int,
        concurrent_turns: int,
        tokens_per_day: int,
        limit_admins: bool,
        lease_seconds: float,
        max_turn_seconds: float,
        clock: Callable[[], float] = time.time,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """`on_refused(limit)` hears every refusal (metrics); it must be cheap and not raise."""
        self._redis = redis
        self._on_refused = on_refused
        self._requests_per_minute = requests_per_minute
        self._concurrent_turns = concurrent_turns
        self._tokens_per_day = tokens_per_day
        self._limit_admins = limit_admins
        self._lease_ms = int(lease_seconds * 1000)
        self._max_slot_age = max_turn_seconds + 60
        """A slot held longer than any turn can run was never given back (a bug): it is no longer renewed."""
        self._clock = clock
        self._count_request = redis.register_script(_COUNT_REQUEST)
        self._admit = redis.register_script(_ADMIT)
        self._held: dict[str, tuple[str, float]] = {}
        """Slots this pod holds: turn id → (user id, when taken). Their leases are renewed by `renew`."""
        self._spending: set[asyncio.Task[None]] = set()
        self._warned_at = -math.inf

    def _refused(self, error: RateLimited) -> RateLimited:
        if self._on_refused is not None:
            self._on_refused(error.limit)
        return error

    def applies_to(self, user: Principal) -> bool:
        """Whether the limits are enforced for `user`: admins are exempt unless `rate_limit_admins`."""
        return self._limit_admins or not user.is_admin

    # --- requests ---------------------------------------------------------------------------------------------
    async def check_request(self, user: Principal) -> None:
        """Count one API request of `user`; `RateLimited` when the last minute already holds the most allowed."""
        if not self._requests_per_minute or not self.applies_to(user):
            return
        now = int(self._clock() * 1000)
        member = f"{now}:{secrets.token_hex(6)}"
        args: list[int | str] = [now, _WINDOW_MS, self._requests_per_minute, member]
        wait_ms = await self._fail_open(
            "count a request", self._count_request(keys=[keys.user_requests(user.user_id)], args=args)
        )
        if wait_ms:
            retry = max(1, math.ceil(int(wait_ms) / 1000))
            raise self._refused(
                RateLimited(
                    f"Too many requests: at most {self._requests_per_minute} a minute. Try again in {duration(retry)}.",
                    limit="requests_per_minute",
                    retry_after=retry,
                )
            )

    # --- turns (the runner's admission port) ----------------------------------------------------------------
    async def admit(self, user_id: str, turn_id: str, *, enforce: bool) -> None:
        """Take a slot for the turn (when slots are counted). With `enforce`, first check the day's tokens and the
        free slots, and raise `RateLimited` instead of admitting; without it (an exempt user, the continuation of
        an operation whose result must not be lost) the turn is never refused but still holds a slot."""
        check_tokens = enforce and self._tokens_per_day > 0
        if not self._concurrent_turns and not check_tokens:
            return
        now = self._clock()
        day, until_midnight = utc_day(now)
        args: list[int | str] = [
            int(now * 1000),
            self._lease_ms,
            turn_id,
            self._concurrent_turns,
            self._tokens_per_day if check_tokens else 0,
            1 if enforce else 0,
        ]
        script = self._admit(keys=[keys.user_turns(user_id), keys.user_tokens(user_id, day)], args=args)
        outcome = await self._fail_open("admit a turn", script)
        if outcome == _NO_TOKENS:
            raise self._refused(
                RateLimited(
                    f"The daily budget of {self._tokens_per_day:,} model tokens is used up. New messages are accepted "
                    f"again after midnight UTC, in {duration(until_midnight)}.",
                    limit="tokens_per_day",
                    retry_after=until_midnight,
                )
            )
        if outcome == _NO_SLOT:
            raise self._refused(
                RateLimited(
                    f"Too many replies at once: at most {self._concurrent_turns} can be generated at the same time. "
                    "Try again when one of them has finished.",
                    limit="concurrent_turns",
                    retry_after=_BUSY_RETRY_SECONDS,
                )
            )
        if outcome == _ADMITTED and self._concurrent_turns:
            self._held[turn_id] = (user_id, now)

    async def release(self, user_id: str, turn_id: str) -> None:
        """Give the turn's slot back. Never raises: it runs on every exit path of a turn."""
        groups = self.releasing(user_id, turn_id)
        if groups:
            await self._fail_open("release a turn slot", redis_batch.send(self._redis, *groups))

    def releasing(self, user_id: str, turn_id: str) -> Sequence[Group]:
        """`release` as a group of a batch (sent with the turn's end). No longer renewed from now on: if the batch
        does not reach Redis, the slot lapses with its lease."""
        self._held.pop(turn_id, None)
        if not self._concurrent_turns:
            return ()
        key = keys.user_turns(user_id)
        return (Group(lambda pipe: pipe.zrem(key, turn_id)),)

    async def renew(self) -> None:
        """Push the leases of the slots this pod holds forward; call it every third of the lease."""
        now = self._clock()
        for turn_id, (user_id, taken_at) in list(self._held.items()):
            if now - taken_at > self._max_slot_age:
                log.warning(
                    "turn %s of %s kept its slot past the longest turn; it is no longer renewed", turn_id, user_id
                )
                del self._held[turn_id]
        if not self._held:
            return
        deadline = int(now * 1000) + self._lease_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for turn_id, (user_id, _) in self._held.items():
                key = keys.user_turns(user_id)
                pipe.zadd(key, {turn_id: deadline}, xx=True)  # a slot that lapsed meanwhile is not brought back
                pipe.pexpire(key, self._lease_ms * 2)
            await self._fail_open("renew turn slots", pipe.execute())

    # --- tokens -------------------------------------------------------------------------------------------------
    def spend(self, user_id: str | None, tokens: int) -> None:
        """Add `tokens` to the user's count of today, in the background: usage arrives at the end of a model call,
        which must not wait on Redis. Calls nobody is billed for (`user_id` None) are not counted."""
        if not self._tokens_per_day or not user_id or tokens <= 0:
            return
        task = asyncio.create_task(self._add_tokens(user_id, tokens), name="spend-tokens")
        self._spending.add(task)
        task.add_done_callback(self._spending.discard)

    async def _add_tokens(self, user_id: str, tokens: int) -> None:
        key = keys.user_tokens(user_id, utc_day(self._clock())[0])
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incrby(key, tokens)
            pipe.expire(key, _TOKENS_TTL_SECONDS)
            await self._fail_open("count model tokens", pipe.execute())

    async def tokens_today(self, user_id: str) -> int:
        """Model tokens the user spent since midnight UTC (as far as recorded)."""
        value = await self._redis.get(keys.user_tokens(user_id, utc_day(self._clock())[0]))
        return int(value or 0)

    async def close(self) -> None:
        """Wait for the token counts still being written."""
        await asyncio.gather(*self._spending, return_exceptions=True)

    async def _fail_open(self, what: str, call: Awaitable[T]) -> T | None:
        """`await call`, or None (logged, at most every few seconds) when Redis cannot be reached."""
        try:
            return await call
        except (RedisError, OSError) as e:
            if time.monotonic() - self._warned_at >= _WARN_EVERY_SECONDS:
                self._warned_at = time.monotonic()
                log.warning("per-user limits are not enforced: could not %s (%s: %s)", what, type(e).__name__, e)
            return None


def utc_day(now: float) -> tuple[str, int]:
    """The UTC day of the time `now` (`YYYY-MM-DD`) and the whole seconds (at least 1) until it ends."""
    moment = datetime.fromtimestamp(now, UTC)
    midnight = datetime(moment.year, moment.month, moment.day, tzinfo=UTC) + timedelta(days=1)
    return moment.strftime("%Y-%m-%d"), max(1, math.ceil(midnight.timestamp() - now))


def duration(seconds: int) -> str:
    """A wait as people say it: `45 s`, `12 min`, `3 h 5 min` (minutes rounded up)."""
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
