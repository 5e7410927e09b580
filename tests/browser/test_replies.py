"""Replies in the panel (headless Chromium, live server, mock model): streaming, tool cards, resuming after a
reload without duplicates, stop, long-running operations, errors with retry, and model text that stays text."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from playwright.async_api import Browser, Page, Route, expect
from redis.asyncio import Redis

from backend.config import Settings
from backend.devtools.report_worker import WorkerConfig, ensure_group, process_available, webhook
from tests.browser.conftest import WEBHOOK_SECRET, PageErrors
from tests.browser.panel import new_session, open_panel, reply_words, send, stored_messages, wait_turn_end
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


async def test_reply_streams_in_as_it_is_generated(page: Page, live: LiveServer, api: httpx.AsyncClient) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, "Tell me a story [[mock:text tokens=120 delay_ms=15]]")

    await expect(page.locator(".message.user")).to_have_text("Tell me a story [[mock:text tokens=120 delay_ms=15]]")
    await expect(page.locator(".message.assistant.streaming")).to_have_count(1)
    await expect(page.locator("#stop")).to_be_visible()
    seen: list[int] = []
    while await page.locator(".message.assistant.streaming").count():
        words = await reply_words(page)
        seen.append(len(words[0]) if words else 0)
        await asyncio.sleep(0.05)
    await wait_turn_end(page)

    assert len({n for n in seen if 0 < n < 120}) >= 5, f"the reply arrived in too few pieces: {seen}"
    assert seen == sorted(seen)
    [words] = await reply_words(page)
    assert len(words) == 120 and words[0] == "Lorem"
    await expect(page.locator("#stop")).to_be_hidden()
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"].split() == words


async def test_tool_call_is_a_card_with_its_state_input_and_output(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, 'What is 6*7? [[mock:tool name=calculate args={"expression": "6*7"}]]')

    card = page.locator(".tool")
    await expect(card).to_have_count(1)
    await expect(card.locator(".tool-name")).to_have_text("calculate")
    await expect(card).to_have_attribute("data-state", "done")
    await expect(card.locator(".tool-state")).to_have_text("done")
    await expect(card.locator(".input pre")).not_to_be_visible()  # collapsed until asked
    await card.locator("summary").click()
    await expect(card.locator(".input pre")).to_contain_text('"expression": "6*7"')
    await expect(card.locator(".output pre")).to_contain_text('"result": 42')
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant .text")).to_contain_text("calculate returned")

    # After the turn the panel shows the stored messages: the same card, still open, and one reply.
    await expect(page.locator(".message.assistant")).to_have_count(1)
    await expect(card).to_have_attribute("data-state", "done")
    await page.reload()
    await expect(page.locator(".tool")).to_have_attribute("data-state", "done")
    await expect(page.locator(".message.assistant")).to_have_count(1)


async def test_reasoning_is_shown_collapsed_and_kept_after_a_reload(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, 'Why? [[mock:reasoning content="Because <b>six</b> sevens"]] [[mock:text content="It is 42"]]')
    await wait_turn_end(page)

    box = page.locator(".message.assistant .reasoning")
    await expect(box).to_have_count(1)
    await expect(box.locator("summary")).to_have_text("Thought")
    await expect(box.locator("pre")).not_to_be_visible()  # collapsed until asked
    await box.locator("summary").click()
    await expect(box.locator("pre")).to_have_text("Because <b>six</b> sevens")  # text, never markup
    await expect(page.locator(".message.assistant .text")).to_have_text("It is 42")
    await page.reload()
    await expect(page.locator(".message.assistant .reasoning pre")).to_have_text(
        "Because <b>six</b> sevens", use_inner_text=False
    )
    await expect(page.locator(".message.assistant .text")).to_have_text("It is 42")


async def test_reload_mid_reply_resumes_it_without_duplicating_text(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, "Long one [[mock:text tokens=200 delay_ms=20]]")
    await expect(page.locator(".message.assistant .text")).to_contain_text("consectetur")
    before = await reply_words(page)
    assert 0 < len(before[0]) < 200

    await page.reload()
    # The reply is still being written: the panel follows it (a replay from its start, then live).
    await expect(page.locator(".message.assistant.streaming")).to_have_count(1)
    samples = []
    while await page.locator(".message.assistant.streaming").count():
        samples.append(await reply_words(page))
        await asyncio.sleep(0.05)
    await wait_turn_end(page)

    final = await reply_words(page)
    assert len(final) == 1 and len(final[0]) == 200
    assert final[0][: len(before[0])] == before[0]
    for sample in samples:  # never two replies, never more text than the reply has, always a prefix of it
        assert len(sample) <= 1
        if sample:
            assert sample[0] == final[0][: len(sample[0])]
    assert any(sample and 0 < len(sample[0]) < 200 for sample in samples), "the reply had ended before the reload"
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"].split() == final[0]


async def test_reload_after_a_tool_step_shows_each_step_once(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    # The tool step is stored while the reply goes on; the replay after the reload carries it too.
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, '[[mock:tool name=calculate args={"expression": "6*7"} delay_ms=150]]')
    await expect(page.locator(".tool")).to_have_attribute("data-state", "done")
    await expect(page.locator(".message.assistant .text")).to_contain_text("Here is")
    await page.reload()
    await expect(page.locator(".message.assistant.streaming")).to_have_count(1)
    while await page.locator(".message.assistant.streaming").count():
        assert await page.locator(".tool").count() == 1
        assert await page.locator(".message.assistant").count() == 1
        await asyncio.sleep(0.05)
    await wait_turn_end(page)
    await expect(page.locator(".tool")).to_have_count(1)
    [words] = await reply_words(page)
    assert words.count("Here") == 1 and "calculate" in words
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]


async def test_stop_ends_the_reply_and_keeps_what_was_written(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, "Go on and on [[mock:text tokens=400 delay_ms=20]]")
    await expect(page.locator(".message.assistant .text")).to_contain_text("consectetur")
    await page.click("#stop")
    await wait_turn_end(page)

    await expect(page.locator(".message.assistant .stopped")).to_have_text("Stopped")
    await expect(page.locator("#stop")).to_be_hidden()
    [words] = await reply_words(page)
    assert 0 < len(words) < 400
    stored = await stored_messages(api, sid)
    assert stored[-1]["role"] == "assistant" and stored[-1]["content"].endswith("[interrupted]")
    assert "[interrupted]" not in " ".join(words)


async def test_long_running_operation_completes_after_a_reload(
    page: Page, live: LiveServer, api: httpx.AsyncClient, redis: Redis
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, 'Write it up [[mock:tool name=generate_report args={"topic": "cats", "sections": 2}]]')
    card = page.locator(".tool")
    await expect(card).to_have_attribute("data-state", "pending")
    await expect(card.locator(".tool-state")).to_have_text("pending")
    await wait_turn_end(page)

    await page.reload()
    await expect(page.locator(".tool")).to_have_attribute("data-state", "pending")
    assert await page.locator(".message.assistant").count() == 1

    async with httpx.AsyncClient(timeout=30) as http:  # the external report service does its job
        await ensure_group(redis)
        config = WorkerConfig(live.url, WEBHOOK_SECRET, work_seconds=0)
        assert await process_available(redis, webhook(http, config), config) == 1

    await expect(page.locator(".tool")).to_have_attribute("data-state", "done")
    # The continuation (the model telling what came of it) streams in, then joins the stored reply.
    await expect(page.locator(".message.assistant .text").last).to_contain_text("operation_finished")
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant")).to_have_count(1)
    await page.locator(".tool summary").click()
    await expect(page.locator(".tool .output pre")).to_contain_text("Overview of cats")
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored][-1] == "assistant"
    assert not any("operation_pending" in m["content"] for m in stored if m["role"] == "tool")


async def test_failed_reply_shows_an_error_with_retry(
    browser: Browser, page_errors: PageErrors, panel_settings: Settings
) -> None:
    settings = panel_settings.model_copy(update={"llm_max_retries": 0})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as api:
        sid = await new_session(api)
        page = page_errors.watch(await browser.new_page())
        await open_panel(page, live, sid)
        await send(page, "Hello [[mock:server_error times=1 key=boom]]")

        error = page.locator(".error-box")
        await expect(error).to_be_visible()
        await expect(error.locator(".error-text")).not_to_be_empty()
        await wait_turn_end(page)
        await expect(error).to_be_visible()  # still there once the stored messages are shown

        await error.locator(".retry").click()
        await expect(page.locator(".message.assistant .text")).to_contain_text("demo model")
        await wait_turn_end(page)
        await expect(page.locator(".error-box")).to_have_count(0)
        stored = await stored_messages(api, sid)
        # Regression: Retry stored the message a second time. It resends it with its client message id, and the
        # server tries the failed turn again.
        assert [m["role"] for m in stored] == ["user", "assistant"]
        await page.close()


async def test_markup_in_model_and_tool_output_stays_text(page: Page, live: LiveServer, api: httpx.AsyncClient) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    script = "<script>window.pwned=1</script>"
    image = "<img src=x onerror=window.pwned=2>"
    links = "[bad](javascript:window.pwned=4) [good](https://example.com/docs)"
    await send(page, f'[[mock:text content="{script} {image} **bold** {links}"]]')
    await wait_turn_end(page)
    reply = page.locator(".message.assistant .text")
    await expect(reply).to_contain_text(script)
    await expect(reply).to_contain_text(image)
    await expect(reply).to_contain_text("[bad](javascript:window.pwned=4)")  # not a link: stays text
    await expect(reply.locator("strong")).to_have_text("bold")
    await expect(reply.locator("a")).to_have_count(1)
    await expect(reply.locator("a")).to_have_attribute("href", "https://example.com/docs")
    await expect(reply.locator("a")).to_have_attribute("rel", "noopener noreferrer nofollow")

    await send(page, '[[mock:tool name=calculate args={"expression": "<img src=y onerror=window.pwned=3>"}]]')
    await wait_turn_end(page)
    card = page.locator(".tool")
    await card.locator("summary").click()
    await expect(card.locator(".input pre")).to_contain_text("<img src=y onerror=window.pwned=3>")
    await expect(card).to_have_attribute("data-state", "error")

    assert await page.evaluate("window.pwned") is None
    assert await page.locator("#transcript script, #transcript img, #transcript iframe").count() == 0


async def test_retry_after_a_lost_send_resends_the_same_message(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    sent: list[dict[str, object]] = []

    async def lose_the_answer(route: Route) -> None:
        # The server gets the message and answers it; the connection drops before the panel sees the answer.
        sent.append(orjson.loads(route.request.post_data or "{}"))
        if len(sent) == 1:
            await route.fetch()
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await page.route(f"**/api/chat/sessions/{sid}/stream", lose_the_answer)
    await send(page, '[[mock:text content="Only once"]]')
    error = page.locator(".error-box")
    await expect(error).to_be_visible()
    await error.locator(".retry").click()
    await expect(page.locator(".message.assistant .text")).to_have_text("Only once")
    await wait_turn_end(page)
    await expect(page.locator(".error-box")).to_have_count(0)

    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant"]  # the message and its reply, each stored once
    assert len(sent) == 2 and sent[0]["client_message_id"] == sent[1]["client_message_id"]
    await expect(page.locator(".message.user")).to_have_count(1)
    await expect(page.locator(".message.assistant")).to_have_count(1)


async def test_retry_after_a_lost_reply_stream_resends_the_same_message(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    sent: list[dict[str, object]] = []

    async def cut_the_reply(route: Route) -> None:
        # The turn runs to its end on the server; the panel gets its answer cut off before the first chunk.
        sent.append(orjson.loads(route.request.post_data or "{}"))
        if len(sent) > 1:
            await route.continue_()
            return
        answer = await route.fetch()
        headers = {**answer.headers, "content-length": "100000"}
        headers.pop("transfer-encoding", None)
        await route.fulfill(status=answer.status, headers=headers, body=b": cut\n\n")

    async def unreachable(route: Route) -> None:
        await route.abort("connectionreset")

    await page.route(f"**/api/chat/sessions/{sid}/stream", cut_the_reply)
    await page.route("**/api/chat/tasks/**", unreachable)  # every reconnection fails: the reply is lost
    await send(page, '[[mock:text content="Said once"]]')
    error = page.locator(".error-box")
    await expect(error.locator(".error-text")).to_contain_text("Lost the reply", timeout=30_000)
    await page.unroute("**/api/chat/tasks/**")
    # The stored reply is shown; the replay Retry brings must not show it a second time.
    await expect(page.locator(".message.assistant .text")).to_have_text("Said once")
    await error.locator(".retry").click()
    await expect(page.locator(".message.assistant .text")).to_have_text("Said once")
    await wait_turn_end(page)

    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert len(sent) == 2 and sent[0]["client_message_id"] == sent[1]["client_message_id"]
