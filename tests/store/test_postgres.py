import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from backend.store.models import ActiveTurnClaim, ActiveTurnHeld, AppendResult, ModelUsage, NewMessage
from backend.store.postgres import ChatRepository, create_pool


@pytest.fixture
async def repo(db: asyncpg.Connection, migrated_database: str) -> AsyncIterator[ChatRepository]:
    pool = await create_pool(migrated_database, min_size=1, max_size=20)
    yield ChatRepository(pool)
    await pool.close()


async def test_concurrent_appends_get_gap_free_unique_sequences(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")

    async def writer(w: int) -> None:
        for i in range(10):
            batch = [NewMessage("user", f"w{w}-{i}-a"), NewMessage("assistant", f"w{w}-{i}-b")]
            await repo.append_messages(session.id, batch)

    await asyncio.gather(*(writer(w) for w in range(20)))
    messages = await repo.get_messages(session.id)
    assert [m.sequence for m in messages] == list(range(1, 401))
    # A batch is contiguous: each writer's pair stays together.
    for first, second in zip(messages[::2], messages[1::2], strict=True):
        assert first.content is not None and second.content == first.content[:-1] + "b"
    stored = await repo.get_session(session.id)
    assert stored is not None and stored.message_count == 400


async def test_resend_with_same_client_id_stores_one_message(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    results = await asyncio.gather(
        *(repo.append_messages(session.id, [NewMessage("user", "hi", client_message_id="c-1")]) for _ in range(10))
    )
    ids = {r.messages[0].id for r in results}
    assert len(ids) == 1
    assert sum(1 for r in results if not r.duplicates) == 1
    assert [m.sequence for m in await repo.get_messages(session.id)] == [1]
    # A rejected duplicate leaves no gap behind it.
    after = await repo.append_messages(session.id, [NewMessage("assistant", "hello")])
    assert after.messages[0].sequence == 2


def step(turn: str, index: int, text: str) -> list[NewMessage]:
    """A tool step as a turn stores it: the assistant message and its tool result, each with its write key."""
    calls = [{"id": f"call-{index}", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    return [
        NewMessage("assistant", text, tool_calls=calls, write_key=f"{turn}:{index}:0", token_count=3),
        NewMessage("tool", "42", tool_call_id=f"call-{index}", write_key=f"{turn}:{index}:1", token_count=2),
    ]


async def test_a_retried_append_after_a_lost_commit_reply_stores_nothing_twice(repo: ChatRepository) -> None:
    """The first attempt committed but its answer never came back (the connection dropped after COMMIT): the retry,
    here or from a copy kept in Redis, finds the write keys and writes neither the messages nor the usage again."""
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, [NewMessage("user", "hi", client_message_id="c-1")])
    first = await repo.append_messages(session.id, step("t", 0, "let me look"), prompt_tokens=10, completion_tokens=4)
    assert first.repeated_keys == frozenset()

    retries = await asyncio.gather(
        *(
            repo.append_messages(session.id, step("t", 0, "let me look"), prompt_tokens=10, completion_tokens=4)
            for _ in range(5)
        )
    )

    for retry in retries:
        assert retry.repeated_keys == {"t:0:0", "t:0:1"}
        assert [m.id for m in retry.messages] == [m.id for m in first.messages]
    stored = await repo.get_messages(session.id)
    assert [(m.sequence, m.role) for m in stored] == [(1, "user"), (2, "assistant"), (3, "tool")]
    row = await repo.get_session(session.id)
    assert row is not None
    assert (row.message_count, row.prompt_tokens, row.completion_tokens, row.live_tokens) == (3, 10, 4, 5)

    # The next step, and a partial reply stored under a key already taken (a dead owner's step it had stored).
    await repo.append_messages(session.id, step("t", 1, "found it"))
    partial = await repo.append_messages(
        session.id, [NewMessage("assistant", "found [interrupted]", write_key="t:1:0")]
    )
    assert partial.messages[0].content == "found it" and partial.repeated_keys == {"t:1:0"}
    assert [m.sequence for m in await repo.get_messages(session.id)] == [1, 2, 3, 4, 5]


async def test_usage_is_added_to_session_totals(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, [NewMessage("assistant", "x")], prompt_tokens=10, completion_tokens=3)
    await repo.append_messages(session.id, [], prompt_tokens=5, completion_tokens=2)
    stored = await repo.get_session(session.id)
    assert stored is not None
    assert (stored.prompt_tokens, stored.completion_tokens) == (15, 5)


async def test_reasoning_model_and_usage_round_trip_and_sum_per_model(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    usage = {"prompt_tokens": 10, "completion_tokens": 4, "cached_tokens": 6, "reasoning_tokens": 2}
    await repo.append_messages(
        session.id,
        [
            NewMessage("user", "q"),
            NewMessage("assistant", "a", reasoning="because", model="m1", usage=usage),
            NewMessage("assistant", "b", model="m2", usage={**usage, "prompt_tokens": 20}),
            NewMessage("assistant", "c", model="m1", usage={**usage, "completion_tokens": 1}),
            NewMessage("assistant", "no usage", model="m1"),
        ],
    )
    stored = await repo.get_messages(session.id)
    assert (stored[1].reasoning, stored[1].model, stored[1].usage) == ("because", "m1", usage)
    assert stored[0].reasoning is None and stored[0].usage is None
    by_model = await repo.usage_by_model(session.id)
    assert by_model == [
        ModelUsage("m1", 2, prompt_tokens=20, completion_tokens=5, cached_tokens=12, reasoning_tokens=4),
        ModelUsage("m2", 1, prompt_tokens=20, completion_tokens=4, cached_tokens=6, reasoning_tokens=2),
    ]
    assert await repo.usage_by_model((await repo.create_session("bob")).id) == []


async def test_append_to_missing_session_raises(repo: ChatRepository) -> None:
    import uuid

    with pytest.raises(LookupError):
        await repo.append_messages(uuid.uuid4(), [NewMessage("user", "x")])


async def test_tool_calls_round_trip_as_json(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    calls = [{"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": '{"x": 1}'}}]
    await repo.append_messages(
        session.id,
        [NewMessage("assistant", None, tool_calls=calls), NewMessage("tool", "2", tool_call_id="call_1")],
    )
    stored = await repo.get_messages(session.id)
    assert stored[0].tool_calls == calls
    assert stored[1].tool_call_id == "call_1"


async def test_listing_is_newest_first_with_keyset_pages(repo: ChatRepository) -> None:
    made = [await repo.create_session("alice") for _ in range(5)]
    await repo.create_session("bob")
    first = await repo.list_sessions("alice", limit=3)
    assert [s.id for s in first] == [s.id for s in reversed(made)][:3]
    rest = await repo.list_sessions("alice", limit=3, before=(first[-1].updated_at, first[-1].id))
    assert [s.id for s in first + rest] == [s.id for s in reversed(made)]


async def test_live_tokens_follow_appends_and_summary_commits(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, [NewMessage("user", f"m{i}", token_count=10 * (i + 1)) for i in range(4)])
    stored = await repo.get_session(session.id)
    assert stored is not None and stored.live_tokens == 10 + 20 + 30 + 40
    committed = await repo.commit_summary(session.id, expected_through=0, through=2, summary="s", summary_tokens=5)
    assert committed is not None
    assert (committed.summary_through, committed.summary_tokens, committed.live_tokens) == (2, 5, 30 + 40)


async def test_only_one_of_two_concurrent_summaries_lands(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, [NewMessage("user", "x", token_count=5) for _ in range(6)])
    results = await asyncio.gather(
        repo.commit_summary(session.id, expected_through=0, through=2, summary="a", summary_tokens=1),
        repo.commit_summary(session.id, expected_through=0, through=4, summary="b", summary_tokens=1),
    )
    assert sum(r is not None for r in results) == 1
    # A summary can only move forward.
    assert await repo.commit_summary(session.id, expected_through=4, through=4, summary="c", summary_tokens=1) is None


async def test_append_returns_the_session_row_it_left(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    result = await repo.append_messages(
        session.id, [NewMessage("user", "x", token_count=4)], prompt_tokens=10, completion_tokens=3
    )
    assert result.session == await repo.get_session(session.id)
    assert result.session is not None
    assert (result.session.message_count, result.session.prompt_tokens, result.session.live_tokens) == (1, 10, 4)
    repeat = await repo.append_messages(session.id, [])  # nothing written: the row as it is
    assert repeat.session == result.session


async def test_an_append_is_one_round_trip(migrated_database: str, db: asyncpg.Connection) -> None:
    """The append's transaction is one statement (the function of migration 0009), whatever it does: a user message
    that claims the session, a resent one, a step with write keys and usage, its retry, a usage-only append, the
    turn's last step that frees the session."""
    sent: list[str] = []
    pool = await create_pool(migrated_database, min_size=1, max_size=1, observe=lambda s, _, __: sent.append(s))
    repo = ChatRepository(pool)
    try:
        warm_up = await repo.create_session("bob")  # a connection's first use reads the types of the arguments
        await repo.append_messages(warm_up.id, [NewMessage("user", "hi", client_message_id="c-0", usage={"a": 1})])
        session = await repo.create_session("alice")
        user = [NewMessage("user", "hi", client_message_id="c-1")]
        appends: list[Callable[[], Awaitable[AppendResult]]] = [
            lambda: repo.append_messages(session.id, user, claim=ActiveTurnClaim("turn-1", 30), settle_awaiting=True),
            lambda: repo.append_messages(session.id, user),
            lambda: repo.append_messages(session.id, step("turn-1", 0, "look"), prompt_tokens=9, completion_tokens=2),
            lambda: repo.append_messages(session.id, step("turn-1", 0, "look"), prompt_tokens=9, completion_tokens=2),
            lambda: repo.append_messages(session.id, [], prompt_tokens=1),
            lambda: repo.append_messages(session.id, step("turn-1", 1, "done"), release="turn-1"),
        ]
        for append in appends:
            sent.clear()
            await append()
            assert sent == ["SELECT"]
    finally:
        await pool.close()


async def test_an_append_returns_each_message_in_the_order_given(repo: ChatRepository) -> None:
    """A batch mixing new messages, a stored client id and a stored write key: each comes back in its place, the new
    ones with the next sequences, and only the new ones count."""
    session = await repo.create_session("alice")
    await repo.append_messages(session.id, [NewMessage("user", "hi", client_message_id="c-1", token_count=1)])
    await repo.append_messages(session.id, [NewMessage("assistant", "a", write_key="t:0:0", token_count=2)])
    batch = [
        NewMessage("assistant", "new-1", token_count=10),
        NewMessage("user", "hi again", client_message_id="c-1", token_count=100),
        NewMessage("assistant", "new-2", write_key="t:0:1", token_count=20),
        NewMessage("assistant", "a twice", write_key="t:0:0", token_count=100),
        NewMessage("user", "both", client_message_id="c-1", write_key="t:0:0", token_count=100),
    ]
    result = await repo.append_messages(session.id, batch, prompt_tokens=5)
    assert [(m.sequence, m.content) for m in result.messages] == [
        (3, "new-1"),
        (1, "hi"),
        (4, "new-2"),
        (2, "a"),
        (1, "hi"),
    ]
    assert result.duplicates == {"c-1"} and result.repeated_keys == {"t:0:0"}
    assert result.session is not None
    # A stored write key means the usage was counted already.
    assert (result.session.message_count, result.session.live_tokens, result.session.prompt_tokens) == (4, 33, 0)
    assert [m.sequence for m in await repo.get_messages(session.id)] == [1, 2, 3, 4]


async def test_a_user_message_settles_the_calls_waiting_for_a_person(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    calls = [{"id": "call-1", "type": "function", "function": {"name": "ask_user", "arguments": "{}"}}]
    stored = await repo.append_messages(
        session.id,
        [
            NewMessage("assistant", None, tool_calls=calls, write_key="t:0:0"),
            NewMessage("tool", "not answered", tool_call_id="call-1", write_key="t:0:1", awaiting="ask_user"),
        ],
    )
    assert [m.awaiting_state for m in stored.messages] == [None, "waiting"]
    resent = await repo.append_messages(session.id, stored_user := [NewMessage("user", "x", client_message_id="c")])
    assert resent.settled_awaiting == 0  # without `settle_awaiting`
    again = await repo.append_messages(session.id, stored_user, settle_awaiting=True)
    assert again.settled_awaiting == 0 and again.duplicates == {"c"}  # nothing new written: nothing settled
    settling = await repo.append_messages(
        session.id, [NewMessage("user", "never mind", client_message_id="d")], settle_awaiting=True
    )
    assert settling.settled_awaiting == 1
    assert [m.awaiting_state for m in await repo.get_messages(session.id)] == [None, "unanswered", None, None]


async def test_a_refused_claim_writes_nothing(repo: ChatRepository) -> None:
    session = await repo.create_session("alice")
    first = await repo.append_messages(session.id, [NewMessage("user", "a")], claim=ActiveTurnClaim("turn-1", 30))
    with pytest.raises(ActiveTurnHeld) as held:
        await repo.append_messages(
            session.id, [NewMessage("user", "b")], prompt_tokens=3, claim=ActiveTurnClaim("turn-2", 30)
        )
    assert held.value.turn_id == "turn-1"
    assert await repo.get_session(session.id) == first.session  # nothing written: the row as the claim left it
    assert [m.content for m in await repo.get_messages(session.id)] == ["a"]
    with pytest.raises(LookupError):
        await repo.append_messages(uuid.uuid4(), [NewMessage("user", "c")], claim=ActiveTurnClaim("turn-3", 30))


async def test_a_released_connection_is_not_reset_with_a_query(migrated_database: str, db: asyncpg.Connection) -> None:
    """asyncpg's default reset (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) would cost a
    round trip and a transaction per release; nothing here changes session state, so nothing is sent."""
    pool = await create_pool(migrated_database, min_size=1, max_size=1)
    sent: list[str] = []
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda q: sent.append(q.query))
            await conn.fetchval("SELECT 1")
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetchval("SELECT 2")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
        assert sent == ["SELECT 1", "BEGIN;", "SELECT 2", "COMMIT;"]
    finally:
        await pool.close()


async def test_create_session_with_id_is_created_once(repo: ChatRepository) -> None:
    """Two first runs of a new AG-UI thread race: one creates the session, the other gets the same row."""
    session_id = uuid.uuid4()
    results = await asyncio.gather(*(repo.create_session_with_id(session_id, "alice") for _ in range(5)))
    assert sum(created for _, created in results) == 1
    assert {s.id for s, _ in results} == {session_id}
    other, created = await repo.create_session_with_id(session_id, "bob")
    assert not created and other.user_id == "alice"  # the caller refuses it (SessionStore.get_or_create)


async def test_an_appends_reads_do_not_grow_with_the_session(repo: ChatRepository, db: asyncpg.Connection) -> None:
    """The rows an append looks up (by client id, write key, sequence) are single probes of unique indexes. Until
    migration 0010 each was planned as a scan of the whole session filtered in memory: three scans per append,
    under the session's row lock, ~0.9 ms at 2,000 messages and more with every message."""
    # Statistics like a real database's: many short sessions, one long one.
    await db.execute(
        "INSERT INTO chat_sessions (id, user_id) SELECT gen_random_uuid(), 'others' FROM generate_series(1, 300)"
    )
    short, long = await repo.create_session("alice"), await repo.create_session("alice")
    await db.execute("UPDATE chat_sessions SET message_count = 10 WHERE user_id <> 'alice' OR id = $1", short.id)
    await db.execute("UPDATE chat_sessions SET message_count = 2000 WHERE id = $1", long.id)
    await db.execute(
        "INSERT INTO chat_messages (id, session_id, sequence, role, content, client_message_id, write_key) "
        "SELECT gen_random_uuid(), s.id, n, 'user', 'm', 'c' || n, 'k' || n "
        "FROM chat_sessions s, generate_series(1, s.message_count) AS n"
    )
    await db.execute("ANALYZE chat_messages")
    # The backend's counts not yet reported: a delta within one transaction is that transaction's.
    read = "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'chat_messages'"

    async def rows_read(session_id: uuid.UUID) -> int:
        tx = db.transaction()
        await tx.start()
        try:
            # After five calls on a connection plpgsql runs its statements' generic plans (no session id in them).
            await db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            before = await db.fetchval(read)
            await db.fetch(
                "SELECT * FROM copilot_append_messages($1, ARRAY['user', 'assistant'], ARRAY['hi', 'yo'], "
                "ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[], "
                "ARRAY[NULL, NULL]::text[], ARRAY['c-new', NULL], ARRAY[1, 1], ARRAY[NULL, 'k-new'], "
                "ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[], "
                "ARRAY[NULL, NULL]::text[], 0, 0, NULL, 30, true, NULL)",
                session_id,
            )
            return int(await db.fetchval(read)) - int(before)
        finally:
            await tx.rollback()

    assert await rows_read(long.id) == await rows_read(short.id) < 20
