"""The session's active turn in Postgres (`backend/store/active_turns.py`, and the claim in `append_messages`)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from backend.store.active_turns import ActiveTurnStore, Holder
from backend.store.models import ActiveTurnClaim, ActiveTurnHeld, NewMessage
from backend.store.postgres import ChatRepository


@pytest.fixture
def repo(pool: asyncpg.Pool) -> ChatRepository:
    return ChatRepository(pool)


@pytest.fixture
def turns(pool: asyncpg.Pool) -> ActiveTurnStore:
    return ActiveTurnStore(pool)


def user(text: str, client_id: str | None = None) -> list[NewMessage]:
    return [NewMessage("user", text, client_message_id=client_id)]


async def test_the_claim_rides_in_the_user_messages_transaction(
    repo: ChatRepository, turns: ActiveTurnStore, db: asyncpg.Connection
) -> None:
    session = await repo.create_session("alice")
    stored = await repo.append_messages(session.id, user("first"), claim=ActiveTurnClaim("turn-1", 30))
    assert stored.session is not None and stored.session.message_count == 1
    assert await turns.holder(session.id) == Holder("turn-1", lapsed=False)

    # Another turn is refused and nothing of its message is written; the holder itself is told it holds it.
    for turn_id in ("turn-2", "turn-1"):
        with pytest.raises(ActiveTurnHeld) as held:
            await repo.append_messages(session.id, user("second", "c-2"), claim=ActiveTurnClaim(turn_id, 30))
        assert held.value.turn_id == "turn-1"
    assert [m.content for m in await repo.get_messages(session.id)] == ["first"]
    assert await db.fetchval("SELECT message_count FROM chat_sessions WHERE id = $1", session.id) == 1

    # Appends without a claim (the turn's own steps) are not affected.
    await repo.append_messages(session.id, [NewMessage("assistant", "reply")])
    assert await turns.holder(session.id) == Holder("turn-1", lapsed=False)

    assert not await turns.release(session.id, "turn-2")  # only the holder frees it
    assert await turns.release(session.id, "turn-1")
    assert await turns.holder(session.id) is None
    await repo.append_messages(session.id, user("second", "c-2"), claim=ActiveTurnClaim("turn-2", 30))
    assert await turns.holder(session.id) == Holder("turn-2", lapsed=False)


async def test_the_release_rides_in_the_turns_last_append(repo: ChatRepository, turns: ActiveTurnStore) -> None:
    """The last step's append frees the session for its turn only (compare-and-set on its id), also when it writes
    nothing (the retry of an append whose commit went through)."""
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, user("first"), claim=ActiveTurnClaim("turn-1", 30))
    last = [NewMessage("assistant", "done", write_key="turn-1:0:0")]

    other = await repo.append_messages(session.id, last, release="turn-2")
    assert await turns.holder(session.id) == Holder("turn-1", lapsed=False)  # not turn-2's to free
    again = await repo.append_messages(session.id, last, release="turn-1")
    assert again.repeated_keys == {"turn-1:0:0"} and again.session == other.session  # nothing else written
    assert await turns.holder(session.id) is None

    await repo.append_messages(session.id, user("second"), claim=ActiveTurnClaim("turn-2", 30))
    await repo.append_messages(session.id, last, release="turn-1")  # a late retry of turn-1's
    assert await turns.holder(session.id) == Holder("turn-2", lapsed=False)


async def test_concurrent_messages_claim_the_session_once(repo: ChatRepository, turns: ActiveTurnStore) -> None:
    session = await repo.create_session("alice")

    async def send(i: int) -> str | None:
        try:
            await repo.append_messages(session.id, user(f"m{i}"), claim=ActiveTurnClaim(f"turn-{i}", 30))
        except ActiveTurnHeld as held:
            return held.turn_id
        return None

    results = await asyncio.gather(*(send(i) for i in range(10)))
    assert results.count(None) == 1
    winner = f"turn-{results.index(None)}"
    assert {r for r in results if r is not None} == {winner}
    assert [m.content for m in await repo.get_messages(session.id)] == [f"m{results.index(None)}"]
    assert await turns.holder(session.id) == Holder(winner, lapsed=False)


async def test_a_duplicate_message_can_still_claim_a_free_session(repo: ChatRepository, turns: ActiveTurnStore) -> None:
    """A message stored before whose turn never ran: the runner decides whether to answer it, so the claim holds."""
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, user("hi", "c-1"))
    again = await repo.append_messages(session.id, user("hi", "c-1"), claim=ActiveTurnClaim("turn-1", 30))
    assert again.duplicates == {"c-1"}
    assert await turns.holder(session.id) == Holder("turn-1", lapsed=False)


async def test_a_lapsed_lease_is_listed_and_can_be_taken_over(repo: ChatRepository, turns: ActiveTurnStore) -> None:
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, user("first"), claim=ActiveTurnClaim("turn-dead", 0.2))
    assert await turns.lapsed() == []
    await asyncio.sleep(0.3)  # its owner stopped renewing
    assert await turns.holder(session.id) == Holder("turn-dead", lapsed=True)
    assert await turns.lapsed() == [(session.id, "turn-dead")]
    await repo.append_messages(session.id, user("second"), claim=ActiveTurnClaim("turn-new", 30))
    assert await turns.holder(session.id) == Holder("turn-new", lapsed=False)
    assert await turns.lapsed() == []


async def test_renewal_is_one_statement_for_all_turns_and_reports_the_lost(
    repo: ChatRepository, turns: ActiveTurnStore
) -> None:
    sessions = [(await repo.create_session("alice")).id for _ in range(3)]
    for i, session_id in enumerate(sessions):
        await repo.append_messages(session_id, user("go"), claim=ActiveTurnClaim(f"turn-{i}", 0.3))
    assert await turns.release(sessions[2], "turn-2")  # ended meanwhile
    for _ in range(3):
        await asyncio.sleep(0.15)
        held = await turns.renew({f"turn-{i}": s for i, s in enumerate(sessions)}, lease_seconds=0.3)
        assert held == {"turn-0", "turn-1"}
    assert await turns.lapsed() == []
    assert await turns.renew({}, lease_seconds=1) == set()
    assert await turns.holder(sessions[2]) is None  # renewing does not bring a released turn back


async def test_release_lapsed_frees_only_a_lease_nobody_renews(repo: ChatRepository, turns: ActiveTurnStore) -> None:
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, user("go"), claim=ActiveTurnClaim("turn-1", 0.3))
    assert not await turns.release_lapsed(session.id, "turn-1")  # its owner is alive: it keeps the session
    assert await turns.holder(session.id) == Holder("turn-1", lapsed=False)
    await asyncio.sleep(0.4)
    assert await turns.release_lapsed(session.id, "turn-1")
    assert await turns.holder(session.id) is None
    assert await turns.release_lapsed(session.id, "turn-1")  # no longer its: nothing to keep


async def test_a_claim_without_a_message(repo: ChatRepository, turns: ActiveTurnStore) -> None:
    session = await repo.create_session("alice")
    assert await turns.claim(session.id, "continuation", lease_seconds=0.2) is None
    assert await turns.claim(session.id, "other", lease_seconds=30) == Holder("continuation", lapsed=False)
    assert await turns.claim(session.id, "continuation", lease_seconds=30) == Holder("continuation", lapsed=False)
    await asyncio.sleep(0.3)
    assert await turns.claim(session.id, "other", lease_seconds=30) is None
    with pytest.raises(ActiveTurnHeld):
        await repo.append_messages(session.id, user("meanwhile"), claim=ActiveTurnClaim("turn-x", 30))
    with pytest.raises(LookupError):
        await turns.claim(uuid.uuid4(), "t", lease_seconds=30)
