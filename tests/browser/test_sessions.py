"""Sessions in the panel (headless Chromium, live server, mock model): list, new, rename, delete, the narrow
layout, two tabs on one session, the token handed over by a host page, and the README's screenshot."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from backend.config import Settings
from backend.store.models import NewMessage
from tests.browser.conftest import PageErrors
from tests.browser.panel import new_session, open_panel, reply_words, send, wait_turn_end
from tests.conftest import LiveServer, make_token

pytestmark = pytest.mark.slow

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "panel.png"


async def test_sessions_are_listed_created_renamed_and_deleted(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    await page.goto(f"{live.url}/")
    await expect(page.locator(".empty")).to_be_visible()
    await expect(page.locator(".session")).to_have_count(0)

    await page.click("#new-session")
    await expect(page.locator(".session.current")).to_have_count(1)
    await send(page, "Plan my week")
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant .text")).to_contain_text("Plan my week")

    await page.locator(".session.current .rename").click()
    await page.fill(".rename-input", "Weekly plan")
    await page.press(".rename-input", "Enter")
    await expect(page.locator(".session.current .session-title")).to_have_text("Weekly plan")
    await expect(page.locator("#session-title")).to_have_text("Weekly plan")

    await page.click("#new-session")
    titles = page.locator(".session .session-title")
    await expect(titles).to_have_count(2)
    await expect(titles.nth(1)).to_have_text("Weekly plan")  # newest first
    await expect(page.locator(".session.current")).not_to_contain_text("Weekly plan")
    await expect(page.locator(".empty")).to_be_visible()

    old = page.locator(".session", has_text="Weekly plan")
    await old.hover()  # the actions of other sessions show on hover
    await old.locator(".delete").click()
    await old.locator(".delete").click()  # "Delete?"
    await expect(page.locator(".session")).to_have_count(1)
    listed = (await api.get("/api/chat/sessions")).json()["sessions"]
    assert [s["title"] for s in listed] == [None]

    await page.reload()  # the hash keeps the open session
    await expect(page.locator(".session.current")).to_have_count(1)


async def test_in_a_narrow_panel_the_sessions_are_a_drawer(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    await new_session(api, "Older")
    sid = await new_session(api, "Newer")
    await page.set_viewport_size({"width": 420, "height": 640})
    await open_panel(page, live, sid)
    await expect(page.locator(".sidebar")).to_be_hidden()
    await page.click("#toggle-sidebar")
    await expect(page.locator(".sidebar")).to_be_visible()
    await page.locator(".session-title", has_text="Older").click()
    await expect(page.locator(".sidebar")).to_be_hidden()
    await expect(page.locator("#session-title")).to_have_text("Older")


async def test_two_tabs_on_one_session_stay_consistent(
    browser: Browser, page_errors: PageErrors, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    contexts = [await browser.new_context() for _ in range(2)]  # two windows side by side, both visible
    first, second = [page_errors.watch(await c.new_page()) for c in contexts]
    await open_panel(first, live, sid)
    await open_panel(second, live, sid)

    await send(first, "From the first tab [[mock:text tokens=160 delay_ms=25]]")
    await expect(second.locator(".message.assistant.streaming")).to_have_count(1)  # the other tab follows it live
    await expect(second.locator(".message.user")).to_have_text(
        "From the first tab [[mock:text tokens=160 delay_ms=25]]"
    )
    await wait_turn_end(first)
    await wait_turn_end(second)

    await send(second, "And from the second")
    await wait_turn_end(second)
    await expect(first.locator(".message.user")).to_have_count(2)
    await expect(first.locator(".message.assistant")).to_have_count(2)
    await wait_turn_end(first)
    assert await reply_words(first) == await reply_words(second)
    assert len((await reply_words(first))[0]) == 160
    for context in contexts:
        await context.close()


async def test_embedded_panel_gets_its_token_from_the_host_page(
    browser: Browser, page_errors: PageErrors, chat_settings: Settings
) -> None:
    async with LiveServer(chat_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as api:
        assert not chat_settings.dev_auth
        assert (await api.get("/api/chat/sessions")).status_code == 401
        token = make_token("alice")
        await new_session(api, "Alice's notes", authorization=f"Bearer {token}")
        await new_session(api, "Bob's notes", authorization=f"Bearer {make_token('bob')}")

        page = page_errors.watch(await browser.new_page())
        # The host app: answers the panel's ready / token-request messages with the user's token.
        await page.set_content(
            f"""<iframe id="copilot" src="{live.url}/" style="width: 900px; height: 600px"></iframe>
            <script>
              addEventListener("message", (event) => {{
                const type = event.data && event.data.type;
                if (type === "copilot:ready" || type === "copilot:token-request") {{
                  event.source.postMessage({{type: "copilot:token", token: "{token}"}}, "*");
                }}
              }});
            </script>"""
        )
        panel = page.frame_locator("#copilot")
        await expect(panel.locator(".session .session-title")).to_have_text(["Alice's notes"])
        await panel.locator("#input").fill("Hi from the host app")
        await panel.locator("#input").press("Enter")
        await expect(panel.locator(".message.assistant .text")).to_contain_text("Hi from the host app")
        await expect(panel.locator(".error-box")).to_have_count(0)
        await page.close()


async def test_screenshot_of_the_panel(page: Page, live: LiveServer, api: httpx.AsyncClient) -> None:
    """A realistic conversation; writes docs/panel.png when COPILOT_UPDATE_SCREENSHOT=1."""
    for title in ("Quarterly report draft", "Trip to Rome"):
        await new_session(api, title)
    sid = await new_session(api, "Onboarding call")
    await live.app.state.runtime.sessions.append(
        uuid.UUID(sid),
        [
            NewMessage("user", "What is 18% of 2,450? Then give me a short checklist for the onboarding call."),
            NewMessage(
                "assistant",
                None,
                tool_calls=[
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "calculate", "arguments": '{"expression": "0.18 * 2450"}'},
                    }
                ],
            ),
            NewMessage("tool", '{"expression": "0.18 * 2450", "result": 441.0}', tool_call_id="call_1"),
            NewMessage(
                "assistant",
                "**18% of 2,450 is 441.**\n\nChecklist for the onboarding call:\n\n"
                "1. Confirm the account owner and the billing contact\n"
                "2. Walk through the `Settings → Team` page together\n"
                "3. Agree on the first milestone and its date\n\n"
                "> Send the recap within 24 hours.",
            ),
        ],
    )
    await open_panel(page, live, sid)
    answer = page.locator(".message.assistant .text").first
    await expect(answer.locator("strong")).to_have_text("18% of 2,450 is 441.")
    await expect(answer.locator("ol > li")).to_have_count(3)
    await expect(answer.locator("code")).to_have_text("Settings → Team")
    await expect(answer.locator("blockquote")).to_have_text("Send the recap within 24 hours.")
    await page.locator(".tool summary").click()
    await send(page, "Thanks! Can you also summarise this page?")
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant")).to_have_count(2)
    png = await page.screenshot()
    assert png.startswith(b"\x89PNG")
    if os.environ.get("COPILOT_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(png)
