"""A reload at the moment a reply is stored and cached but its stream has not ended yet (headless Chromium, live
server, mock model): the session reports the reply and the turn as running, and the panel, which follows the turn's
stream from its start, must show the reply once.

`finish` reaches followers only with the end, in the round trip that also brings the last step's cache update; that
round trip is a pipeline, not a transaction, so a read can land between its commands: the cache updated, the turn
still running, its `finish` not written yet. The tests hold every turn there."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import httpx
import pytest
from playwright.async_api import Page, expect
from redis.asyncio import Redis

from backend import redis_batch
from backend.chat.publisher import TurnPublisher
from backend.chat.turn_admission import turn_id_for
from backend.devtools.report_worker import WorkerConfig, ensure_group, process_available, webhook
from backend.redis_batch import Group
from backend.streams.turns import TurnStatus
from tests.browser.conftest import WEBHOOK_SECRET
from tests.browser.panel import new_session, open_panel, reply_words, send, stored_messages, wait_turn_end
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow

FINISH_SEEN = "() => [...window.copilotPanel.follows.values()].some(f => f.started && f.message.finished)"
FOLLOWING = "() => [...window.copilotPanel.follows.values()].some(f => f.started)"
TWO_FRAMES = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


class HeldEnds:
    """Holds every turn between the last step's cache update and the end of its stream: `TurnPublisher.close` sends
    the work meant to go ahead of the end (`before`: the cache update, the user's slot), then waits until
    `release()` before it writes the end (with the last chunks, `finish` among them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, armed: bool = True) -> None:
        self.armed = armed
        """Only turns that end while armed are held."""
        self.holding = asyncio.Event()
        self._released = asyncio.Event()
        original = TurnPublisher.close

        async def held_close(
            publisher: TurnPublisher, status: TurnStatus, *, before: Sequence[Group] = (), along: Sequence[Group] = ()
        ) -> bool:
            if not self.armed:
                return await original(publisher, status, before=before, along=along)
            await redis_batch.send(publisher._registry._redis, *before)
            self.holding.set()
            await self._released.wait()
            return await original(publisher, status, along=along)

        monkeypatch.setattr(TurnPublisher, "close", held_close)

    def release(self) -> None:
        self._released.set()


async def test_reload_between_finish_and_the_end_of_the_stream_shows_the_reply_once(
    page: Page, live: LiveServer, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldEnds(monkeypatch)
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, 'Tell me [[mock:text content="Once upon a time there was a panel"]]')
    try:
        await asyncio.wait_for(held.holding.wait(), 15)
        session = (await api.get(f"/api/chat/sessions/{sid}")).json()
        assert session["active_task"]["status"] == "running"
        assert [m["role"] for m in session["messages"]] == ["user", "assistant"]  # the reply is stored

        await page.reload()
        # The panel follows the running turn: its replay from `start` brings the reply's text, not yet its `finish`.
        await page.wait_for_function(FOLLOWING)
        await expect(page.locator(".message.assistant .text")).to_have_text("Once upon a time there was a panel")
        await page.evaluate(TWO_FRAMES)  # whatever the chunks changed is drawn
        assert await reply_words(page) == [["Once", "upon", "a", "time", "there", "was", "a", "panel"]]
        await expect(page.locator(".message.user")).to_have_count(1)
        assert not await page.evaluate(FINISH_SEEN)  # `finish` comes with the end
    finally:
        held.release()

    await wait_turn_end(page)
    await page.evaluate(TWO_FRAMES)
    assert await reply_words(page) == [["Once", "upon", "a", "time", "there", "was", "a", "panel"]]
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant"]


@pytest.mark.parametrize("client_message_id", ["m1", "c0ffee" * 20, "héllo wörld 😀"])
async def test_the_panel_derives_a_reply_s_turn_id_as_the_server_does(
    page: Page, live: LiveServer, client_message_id: str
) -> None:
    # The panel tells a running reply from a continuation by this id (its own SHA-1: no crypto.subtle over HTTP).
    session_id = uuid.uuid4()
    await page.goto(live.url)
    derived = await page.evaluate(
        "([s, c]) => import('/static/js/turn_id.js').then(m => m.turnIdFor(s, c))", [str(session_id), client_message_id]
    )
    assert derived == turn_id_for(session_id, client_message_id)


async def test_reload_between_a_continuation_s_finish_and_its_end_shows_each_message_once(
    page: Page, live: LiveServer, api: httpx.AsyncClient, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldEnds(monkeypatch, armed=False)
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, 'Write it up [[mock:tool name=generate_report args={"topic": "cats", "sections": 2}]]')
    await expect(page.locator(".tool")).to_have_attribute("data-state", "pending")
    await wait_turn_end(page)
    before = await reply_words(page)

    held.armed = True
    try:
        async with httpx.AsyncClient(timeout=30) as http:  # the external report service does its job
            await ensure_group(redis)
            config = WorkerConfig(live.url, WEBHOOK_SECRET, work_seconds=0)
            assert await process_available(redis, webhook(http, config), config) == 1
        await asyncio.wait_for(held.holding.wait(), 15)
        await page.reload()
        await page.wait_for_function(FOLLOWING)
        await expect(page.locator(".message.assistant .text").last).to_contain_text("Your report is ready")
        await page.evaluate(TWO_FRAMES)
        # The stored reply, then the continuation as it streams (one view until it ends and joins the reply).
        shown = " ".join(w for words in await reply_words(page) for w in words)
        assert shown.startswith(" ".join(before[0]))
        assert shown.count("Your report is ready") == 1, shown
        await expect(page.locator(".tool")).to_have_count(1)
    finally:
        held.release()
    await wait_turn_end(page)
    await page.evaluate(TWO_FRAMES)
    assert " ".join(w for words in await reply_words(page) for w in words) == shown
