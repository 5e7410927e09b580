"""A turn's first model call goes out while its user message is being stored (`backend/chat/llm_ahead.py`), through
the real app on the real Postgres and Redis. The store is held up by a transaction that locks the session's row,
as a slow or busy Postgres would: the model is asked before the store ends; a store that fails cancels the call; a
history that changed meanwhile is answered from what was stored, never from the guess."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest

from backend.config import Settings
from tests.api.test_chat_stream import new_session, send, stored
from tests.conftest import DATABASE_URL, LiveServer, auth
from tests.helpers import until
from tests.raw_http import RecordingModel
from tests.sse import chunks, text_of

ALICE = auth("alice")


@pytest.fixture
def ahead_settings(settings: Settings, recording_model: RecordingModel) -> Settings:
    return settings.model_copy(
        update={
            "llm_base_url": recording_model.base_url,
            "model": "m",
            "llm_idle_timeout_seconds": 5.0,
            "publish_window_ms": 2.0,
        }
    )


@asynccontextmanager
async def store_held(sid: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose open transaction holds the session's row: the user message's append waits until it ends
    (rolled back on the way out, unless the body committed it)."""
    lock = await asyncpg.connect(DATABASE_URL)
    try:
        await lock.execute("BEGIN")
        await lock.execute("SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE", uuid.UUID(sid))
        yield lock
        if lock.is_in_transaction():
            await lock.execute("ROLLBACK")
    finally:
        await lock.close()


async def test_the_model_is_asked_while_the_user_message_is_being_stored(
    ahead_settings: Settings, recording_model: RecordingModel, db: asyncpg.Connection
) -> None:
    async with LiveServer(ahead_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        async with store_held(sid):
            reply = asyncio.create_task(send(client, sid, "hello"))
            await until(lambda: recording_model.asked == ["hello"])
            assert await stored(db, sid) == []  # the store has not ended: the call went out ahead of it
            assert not reply.done()  # and nothing reached the client yet
        response, body = await reply
        assert response.status_code == 200
        assert text_of(body) == "re: hello"
        assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant"]
        assert recording_model.asked == ["hello"] and recording_model.hung_up == []  # taken up: asked once
        # With a history (read with the claim, from the cache), the guess is the turn's request all the same.
        _, body = await send(client, sid, "again")
    assert text_of(body) == "re: hello"  # the model names the first user message of the prompt
    assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant", "user", "assistant"]
    assert recording_model.asked == ["hello", "hello"] and recording_model.hung_up == []


async def test_a_store_that_fails_cancels_the_call_sent_ahead(
    ahead_settings: Settings, recording_model: RecordingModel, db: asyncpg.Connection
) -> None:
    recording_model.hold.clear()  # the model has not answered when the store fails
    async with LiveServer(ahead_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        async with store_held(sid) as lock:
            reply = asyncio.create_task(send(client, sid, "hello"))
            await until(lambda: recording_model.asked == ["hello"])
            await lock.execute("DELETE FROM chat_sessions WHERE id = $1", uuid.UUID(sid))
            await lock.execute("COMMIT")
        response, _ = await reply
        await until(lambda: recording_model.hung_up == ["hello"])
    assert response.status_code == 404
    assert await stored(db, sid) == []


async def test_a_history_changed_meanwhile_is_answered_from_what_was_stored(
    ahead_settings: Settings, recording_model: RecordingModel, db: asyncpg.Connection
) -> None:
    async with LiveServer(ahead_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, first = await send(client, sid, "first")
        assert text_of(first) == "re: first"
        recording_model.hold.clear()
        async with store_held(sid) as lock:
            reply = asyncio.create_task(send(client, sid, "second"))
            await until(lambda: len(recording_model.asked) == 2)
            # Another writer changes a stored message and drops the cached list, as a finished operation does when
            # its result replaces a tool call's placeholder (the list dropped first here, so that the append, let go
            # by the commit, cannot find it).
            await lock.execute(
                "UPDATE chat_messages SET content = 'first, edited' WHERE session_id = $1 AND sequence = 1",
                uuid.UUID(sid),
            )
            await live.app.state.runtime.sessions.messages_changed(uuid.UUID(sid))
            await lock.execute("COMMIT")
        await until(lambda: len(recording_model.asked) == 3)
        recording_model.hold.set()
        response, body = await reply
    assert response.status_code == 200 and [c for c in chunks(body) if c["type"] == "error"] == []
    assert recording_model.hung_up == ["first"]  # the guess (the history before the edit) was cancelled
    assert text_of(body) == "re: first, edited"  # the turn asked again, from the history as stored
    assert recording_model.asked == ["first", "first", "first, edited"]


async def test_a_reply_cut_before_its_turn_took_it_up_keeps_what_arrived(
    ahead_settings: Settings, recording_model: RecordingModel, db: asyncpg.Connection
) -> None:
    """What the model sent before the connection broke is the turn's, as if it had read the reply as it came: its
    text is shown and stored with the error, and the call is not sent again (text was streamed)."""
    recording_model.cut_first = True
    async with LiveServer(ahead_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        async with store_held(sid):
            reply = asyncio.create_task(send(client, sid, "hello"))
            await until(lambda: recording_model.asked == ["hello"])
            await asyncio.sleep(0.1)  # the cut reaches the service while its turn waits for the store
        response, body = await reply
    assert response.status_code == 200
    assert text_of(body) == "re: "
    assert [c["type"] for c in chunks(body)][-2:] == ["error", "finish"]
    assert [(r["role"], r["content"]) for r in await stored(db, sid)] == [("user", "hello"), ("assistant", "re: ")]
    assert recording_model.asked == ["hello"]
