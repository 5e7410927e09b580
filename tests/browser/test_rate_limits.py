"""The panel over a per-user limit (headless Chromium, live server, mock model): the server's message and a countdown
instead of a generic error, nothing typed is lost, Retry once the wait is over, and a reply followed after a 429."""

from __future__ import annotations

import re

import httpx
import orjson
import pytest
from playwright.async_api import Page, Route, expect

from backend.config import Settings
from tests.browser.panel import new_session, open_panel, reply_words, send, wait_turn_end
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


@pytest.fixture
def panel_settings(chat_settings: Settings) -> Settings:
    """Development auth (no token) with the limits applied to the dev user, an admin, and one reply at a time."""
    return chat_settings.model_copy(
        update={"dev_auth": True, "rate_limit_admins": True, "rate_limit_concurrent_turns": 1}
    )


async def test_a_refused_message_shows_the_limit_and_when_to_retry(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    busy, sid = await new_session(api), await new_session(api)
    async with api.stream(
        "POST", f"/api/chat/sessions/{busy}/stream", json={"message": "[[mock:text tokens=400 delay_ms=20]]"}
    ) as r:
        assert r.status_code == 200  # a reply of another session holds the only slot; it goes on unread
    await open_panel(page, live, sid)
    await send(page, '[[mock:text content="Finally my answer"]]')

    box = page.locator(".error-box")
    await expect(box.locator(".error-text")).to_have_text(
        "Too many replies at once: at most 1 can be generated at the same time. "
        "Try again when one of them has finished."
    )
    await expect(box.locator(".retry-wait")).to_have_text(re.compile(r"^You can retry in [1-5] s\.$"))
    await expect(box.locator(".retry")).to_be_disabled()
    await expect(page.locator("#input")).to_have_value('[[mock:text content="Finally my answer"]]')  # not lost
    await expect(page.locator(".message")).to_have_count(0)  # the refused message was not stored

    assert (await api.post(f"/api/chat/sessions/{busy}/cancel")).json()["status"] == "cancelled"
    await expect(box.locator(".retry")).to_be_enabled(timeout=10_000)  # once the wait is over
    await expect(box.locator(".retry-wait")).to_have_text("")
    await box.locator(".retry").click()
    await wait_turn_end(page)
    await expect(page.locator(".error-box")).to_have_count(0)
    assert await reply_words(page) == [["Finally", "my", "answer"]]


async def test_a_reply_followed_after_a_429_is_read_once_the_wait_is_over(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    message = "[[mock:text tokens=150 delay_ms=20]]"
    async with api.stream("POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}) as r:
        assert r.status_code == 200
    refusals: list[str] = []

    async def refuse_once(route: Route) -> None:
        # The first follow of the reply meets the user's request limit, as a busy user's would.
        if refusals:
            await route.continue_()
            return
        refusals.append(route.request.url)
        error = {"code": "rate_limited", "message": "Too many requests", "details": {"retry_after": 1}}
        await route.fulfill(
            status=429,
            headers={"retry-after": "1"},
            content_type="application/json",
            body=orjson.dumps({"error": error}),
        )

    await page.route("**/api/chat/tasks/*/stream*", refuse_once)
    await open_panel(page, live, sid)
    await expect(page.locator(".message.assistant.streaming")).to_have_count(1)  # followed live, not given up
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant")).to_have_count(1)
    [words] = await reply_words(page)
    assert len(words) == 150 and refusals
    await expect(page.locator(".error-box")).to_have_count(0)
