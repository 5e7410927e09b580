"""`ResponseChainStore` on the real Postgres: one link per session, replaced; none for a session that is gone."""

from __future__ import annotations

import uuid

import asyncpg

from backend.store.postgres import ChatRepository
from backend.store.response_chains import ChainLink, ResponseChainStore


async def test_a_sessions_link_is_replaced_and_goes_with_the_session(pool: asyncpg.Pool) -> None:
    repo, chains = ChatRepository(pool), ResponseChainStore(pool)
    session = await repo.create_session("alice")
    sid = str(session.id)
    assert await chains.get(sid) is None
    await chains.put(sid, ChainLink("resp_1", 3, "abc"))
    await chains.put(sid, ChainLink("resp_2", 5, "def"))
    assert await chains.get(sid) == ChainLink("resp_2", 5, "def")
    await pool.execute("DELETE FROM chat_sessions WHERE id = $1", session.id)
    assert await chains.get(sid) is None


async def test_no_link_is_kept_for_an_unknown_session(pool: asyncpg.Pool) -> None:
    chains = ResponseChainStore(pool)
    sid = str(uuid.uuid4())
    await chains.put(sid, ChainLink("resp_1", 1, "x"))  # the session was deleted meanwhile: nothing, no error
    assert await chains.get(sid) is None
