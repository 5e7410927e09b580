"""The per-user limits against a real Redis, on a clock the test moves: windows, slots, leases, days, fail-open."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from backend import keys
from backend.auth import Principal
from backend.errors import RateLimited
from backend.streams.user_limits import UserLimits, duration, utc_day
from tests.helpers import free_port

ALICE, BOB = Principal("alice"), Principal("bob")
ADMIN = Principal("root", is_admin=True)
NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()
LEASE = 30.0


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limits_of(
    redis: Redis, clock: Clock, *, rpm: int = 0, turns: int = 0, tokens: int = 0, admins: bool = False
) -> UserLimits:
    return UserLimits(
        redis,
        requests_per_minute=rpm,
        concurrent_turns=turns,
        tokens_per_day=tokens,
        limit_admins=admins,
        lease_seconds=LEASE,
        max_turn_seconds=600,
        clock=clock,
    )


async def refused(call: object) -> RateLimited:
    assert asyncio.iscoroutine(call)
    with pytest.raises(RateLimited) as caught:
        await call
    return caught.value


async def spent(limits: UserLimits, user: str, tokens: int) -> None:
    limits.spend(user, tokens)
    await limits.close()  # the count is written in the background


# --- requests per minute --------------------------------------------------------------------------------------------


async def test_the_request_after_the_limit_waits_for_the_oldest_to_leave_the_minute(redis: Redis) -> None:
    clock = Clock()
    limits = limits_of(redis, clock, rpm=3)
    for step in (0, 10, 20):
        clock.now = NOON + step
        await limits.check_request(ALICE)
    clock.now = NOON + 25
    error = await refused(limits.check_request(ALICE))
    assert (error.status_code, error.code, error.limit, error.retry_after) == (
        429,
        "rate_limited",
        "requests_per_minute",
        35,
    )
    assert "at most 3 a minute" in error.message and "35 s" in error.message
    await limits.check_request(BOB)  # per user

    clock.now = NOON + 59.9
    await refused(limits.check_request(ALICE))  # refusals were not counted: the window still holds the same three
    clock.now = NOON + 60  # the first request has left the window
    await limits.check_request(ALICE)
    await refused(limits.check_request(ALICE))
    assert 0 < await redis.pttl(keys.user_requests("alice")) <= 60_000


async def test_admins_are_exempt_unless_the_limits_apply_to_admins(redis: Redis) -> None:
    clock = Clock()
    exempt, strict = limits_of(redis, clock, rpm=1), limits_of(redis, clock, rpm=1, admins=True)
    for _ in range(5):
        await exempt.check_request(ADMIN)
    assert not await redis.exists(keys.user_requests("root"))
    await strict.check_request(ADMIN)
    await refused(strict.check_request(ADMIN))
    assert (exempt.applies_to(ADMIN), strict.applies_to(ADMIN), exempt.applies_to(ALICE)) == (False, True, True)


# --- concurrent turns -----------------------------------------------------------------------------------------------


async def test_a_turn_over_the_limit_is_refused_until_a_slot_is_given_back(redis: Redis) -> None:
    limits = limits_of(redis, Clock(), turns=2)
    await limits.admit("alice", "t1", enforce=True)
    await limits.admit("alice", "t2", enforce=True)
    error = await refused(limits.admit("alice", "t3", enforce=True))
    assert (error.limit, error.retry_after) == ("concurrent_turns", 5)
    assert "at most 2 can be generated at the same time" in error.message
    await limits.admit("bob", "b1", enforce=True)  # per user

    await limits.admit("alice", "t2", enforce=True)  # the same turn again keeps its one slot
    assert await redis.zcard(keys.user_turns("alice")) == 2
    await limits.release("alice", "t1")
    await limits.admit("alice", "t3", enforce=True)
    assert sorted(await redis.zrange(keys.user_turns("alice"), 0, -1)) == [b"t2", b"t3"]


async def test_a_turn_that_is_not_enforced_takes_a_slot_over_the_limit(redis: Redis) -> None:
    limits = limits_of(redis, Clock(), turns=1, tokens=10)
    await spent(limits, "alice", 50)
    await limits.admit("alice", "t1", enforce=False)  # the budget is spent and no slot is free: still admitted
    await limits.admit("alice", "t2", enforce=False)
    assert await redis.zcard(keys.user_turns("alice")) == 2
    assert (await refused(limits.admit("alice", "t3", enforce=True))).limit == "tokens_per_day"


async def test_a_slot_nobody_renews_lapses_after_the_lease(redis: Redis) -> None:
    clock = Clock()
    dead_pod, live_pod = limits_of(redis, clock, turns=1), limits_of(redis, clock, turns=1)
    await dead_pod.admit("alice", "t1", enforce=True)
    clock.now += LEASE - 1
    await refused(live_pod.admit("alice", "t2", enforce=True))
    clock.now += 2  # the pod that took the slot died: nobody renewed it
    await live_pod.admit("alice", "t2", enforce=True)
    assert await redis.zrange(keys.user_turns("alice"), 0, -1) == [b"t2"]


async def test_the_pod_that_holds_a_slot_keeps_it_alive(redis: Redis) -> None:
    clock = Clock()
    pod, other = limits_of(redis, clock, turns=1), limits_of(redis, clock, turns=1)
    await pod.admit("alice", "t1", enforce=True)
    for _ in range(10):  # five leases, renewed every third of one
        clock.now += LEASE / 2
        await pod.renew()
        await refused(other.admit("alice", "t2", enforce=True))
    await pod.release("alice", "t1")
    await pod.renew()  # a released slot is not brought back
    await other.admit("alice", "t2", enforce=True)
    assert await redis.zrange(keys.user_turns("alice"), 0, -1) == [b"t2"]


async def test_a_slot_never_given_back_stops_being_renewed_after_the_longest_turn(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    pod = limits_of(redis, clock, turns=1)
    await pod.admit("alice", "leaked", enforce=True)
    while clock.now < NOON + 600 + 60 + LEASE:
        clock.now += LEASE / 3
        await pod.renew()
    with caplog.at_level(logging.WARNING, "copilot.limits"):
        clock.now += LEASE + 1
        await pod.renew()
    assert "kept its slot past the longest turn" in caplog.text
    await pod.admit("alice", "next", enforce=True)


# --- tokens per day -------------------------------------------------------------------------------------------------


async def test_a_spent_budget_refuses_turns_until_midnight_utc(redis: Redis) -> None:
    clock = Clock(NOON + 3 * 3600 + 1800)  # 15:30 UTC
    limits = limits_of(redis, clock, tokens=1000)
    await spent(limits, "alice", 999)
    await limits.admit("alice", "t1", enforce=True)  # below the budget: admitted (and it may cross it)
    await spent(limits, "alice", 300)
    assert await limits.tokens_today("alice") == 1299
    error = await refused(limits.admit("alice", "t2", enforce=True))
    assert (error.limit, error.retry_after) == ("tokens_per_day", 8 * 3600 + 1800)
    assert "1,000 model tokens" in error.message and "midnight UTC, in 8 h 30 min" in error.message
    await limits.admit("bob", "b1", enforce=True)

    clock.now = NOON + 12 * 3600 + 1  # 00:00:01 the next day
    await limits.admit("alice", "t2", enforce=True)
    assert await limits.tokens_today("alice") == 0
    ttl = await redis.ttl(keys.user_tokens("alice", "2026-11-22"))
    assert 86_400 < ttl <= 2 * 86_400  # yesterday's count expires by itself


async def test_unbilled_calls_and_a_budget_of_zero_count_nothing(redis: Redis) -> None:
    limits = limits_of(redis, Clock(), rpm=0, turns=0, tokens=0)
    await spent(limits, "alice", 10**9)
    await spent(limits_of(redis, Clock(), tokens=10), None, 10**9)
    for i in range(50):
        await limits.check_request(ALICE)
        await limits.admit("alice", f"t{i}", enforce=True)
    await limits.release("alice", "t0")
    await limits.renew()
    assert await redis.keys("*") == []


# --- keys, helpers, Redis down --------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "auth0|5f1c", "we{ird}user", "}{", "%7B"])
def test_a_users_keys_share_one_cluster_slot_and_no_other_users(user: str) -> None:
    mine = [keys.user_requests(user), keys.user_turns(user), keys.user_tokens(user, "2026-11-22")]
    assert len({key_slot(k.encode()) for k in mine}) == 1
    others = {keys.user_turns(u) for u in ["alice", "auth0|5f1c", "we{ird}user", "}{", "%7B", "{", "}"]}
    assert len(others) == 7


def test_utc_day_and_duration() -> None:
    assert utc_day(NOON) == ("2026-11-22", 12 * 3600)
    assert utc_day(NOON + 12 * 3600 - 0.5) == ("2026-11-22", 1)
    assert utc_day(NOON + 12 * 3600) == ("2026-11-23", 86_400)
    assert [duration(s) for s in (1, 59, 60, 61, 3599, 3600, 3601, 12 * 3600)] == [
        "1 s",
        "59 s",
        "1 min",
        "2 min",
        "1 h",  # minutes round up
        "1 h",
        "1 h 1 min",
        "12 h",
    ]


async def test_the_limits_fail_open_when_redis_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    limits = limits_of(nowhere, Clock(), rpm=1, turns=1, tokens=1)
    try:
        with caplog.at_level(logging.WARNING, "copilot.limits"):
            for i in range(3):
                await limits.check_request(ALICE)
                await limits.admit("alice", f"t{i}", enforce=True)
            limits.spend("alice", 100)
            await limits.close()
            await limits.renew()
            await limits.release("alice", "t0")
    finally:
        await nowhere.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.name == "copilot.limits"]
    assert warnings and all(w.startswith("per-user limits are not enforced") for w in warnings)
    assert len(warnings) == 1  # once per few seconds, not once per request
