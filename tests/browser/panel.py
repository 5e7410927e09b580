"""Helpers of the browser tests: sessions made over the API, and what the panel shows."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import Page, expect

from tests.conftest import LiveServer


async def new_session(api: httpx.AsyncClient, title: str = "Browser test", **headers: str) -> str:
    # A titled session: the title writer (which also calls the mock model) stays out of the way of the markers.
    r = await api.post("/api/chat/sessions", json={"title": title}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def open_panel(page: Page, live: LiveServer, sid: str) -> None:
    await page.goto(f"{live.url}/#s={sid}")
    await expect(page.locator(".session.current")).to_have_count(1)


async def send(page: Page, text: str) -> None:
    await page.fill("#input", text)
    await page.press("#input", "Enter")


async def wait_turn_end(page: Page, within_ms: float = 20_000) -> None:
    await expect(page.locator(".message.assistant.streaming")).to_have_count(0, timeout=within_ms)
    await expect(page.locator("#send")).to_be_enabled(timeout=within_ms)


async def reply_words(page: Page) -> list[list[str]]:
    """The words of each assistant message's text, in order."""
    texts: list[str] = await page.locator(".message.assistant").evaluate_all(
        "nodes => nodes.map(n => [...n.querySelectorAll('.text')].map(t => t.textContent).join(' '))"
    )
    return [t.split() for t in texts]


async def stored_messages(api: httpx.AsyncClient, sid: str, **headers: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/chat/sessions/{sid}", params={"limit": 500}, headers=headers)
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages
