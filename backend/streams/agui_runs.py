"""AG-UI runs: which turn a client-chosen `runId` is, so `GET /api/agui/runs/{runId}/events` finds it on any pod.

An AG-UI client names every run itself; the turn it starts is named after the session and the user message
(`turn_id_for`), so a resent message joins its turn. The link is a small hash that lives as long as the turn's
tombstone: a run whose stream expired is still told apart (410) from one that never existed (404).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from backend import keys

RUN_TTL_SECONDS = 7 * 86_400
"""As long as a turn's tombstone (`streams/turns.py`)."""

_BIND = """
local owner = redis.call('HGET', KEYS[1], 'user_id')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'turn_id', ARGV[2], 'thread_id', ARGV[3], 'first_step', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


@dataclass(frozen=True, slots=True)
class AguiRun:
    run_id: str
    turn_id: str
    thread_id: str
    """The client's `threadId`, as it sent it (the session id may be derived from it)."""
    user_id: str
    first_step: int = 0
    """Steps of the reply before the run's turn (a continuation's; `AguiTranslator`'s `first_step`)."""


class AguiRuns:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._bind = redis.register_script(_BIND)

    async def bind(self, run: AguiRun) -> bool:
        """Record that `run.run_id` is `run.turn_id` (a retried run with the same id may name it again). False, and
        nothing written, when the run id is another user's: run ids are the clients' and must not be taken over."""
        args: list[str | int] = [run.user_id, run.turn_id, run.thread_id, RUN_TTL_SECONDS, run.first_step]
        return bool(await self._bind(keys=[keys.agui_run(run.run_id)], args=args))

    async def get(self, run_id: str) -> AguiRun | None:
        raw: dict[bytes, bytes] = await self._redis.hgetall(keys.agui_run(run_id))  # type: ignore[assignment]
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return AguiRun(
            run_id=run_id,
            turn_id=d["turn_id"],
            thread_id=d["thread_id"],
            user_id=d["user_id"],
            first_step=int(d.get("first_step") or 0),
        )
