"""Human in the loop in the panel (headless Chromium, live server, mock model): Approve / Deny on a tool card, the
form of an `ask_user` question, a frontend tool the host page runs over postMessage, and waiting calls that keep
their buttons after a reload. Each answer continues the same assistant message: one message, one card per call."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, Route, expect

from backend.config import Settings
from tests.browser.conftest import PageErrors
from tests.browser.panel import new_session, open_panel, send, stored_messages, wait_turn_end
from tests.conftest import LiveServer

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.slow

CALCULATE = '[[mock:tool name=calculate args={"expression": "6*7"}]]'
ASK_COLOUR = '[[mock:tool name=ask_user args={"question": "Which colour?", "choices": ["red", "blue"]}]]'
HIGHLIGHT = {
    "name": "highlight_element",
    "description": "Highlight an element of the page the user is on.",
    "inputSchema": {"type": "object", "properties": {"selector": {"type": "string"}}, "required": ["selector"]},
}
CALL_HIGHLIGHT = '[[mock:tool name=highlight_element args={"selector": "#buy"}]]'


@pytest.fixture
def panel_settings(panel_settings: Settings) -> Settings:
    """The panel's service, with `calculate` needing approval (COPILOT_TOOLS_REQUIRING_APPROVAL=calculate), and
    patient enough with a stalled model (see the reload during a continuation)."""
    return panel_settings.model_copy(update={"tools_requiring_approval": ["calculate"], "llm_idle_timeout_seconds": 10})


async def shapes(page: Page) -> tuple[int, int]:
    """How many assistant messages and tool cards the transcript shows."""
    return await page.locator(".message.assistant").count(), await page.locator(".tool").count()


async def watch_shapes(page: Page, seen: list[tuple[int, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        seen.append(await shapes(page))
        await asyncio.sleep(0.02)


async def test_approve_runs_the_tool_and_continues_the_same_message(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, f"What is 6*7? {CALCULATE}")

    card = page.locator(".tool")
    await expect(card).to_have_attribute("data-state", "waiting")
    await expect(card.locator(".tool-state")).to_have_text("needs approval")
    await expect(card.locator(".input pre")).to_contain_text('"expression": "6*7"')  # shown without a click
    await wait_turn_end(page)
    assert [m["role"] for m in await stored_messages(api, sid)] == ["user", "assistant", "tool"]

    seen: list[tuple[int, int]] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_shapes(page, seen, stop))
    await card.locator(".approve").click()
    await expect(card).to_have_attribute("data-state", "done")
    await expect(page.locator(".message.assistant .text")).to_contain_text("calculate returned")
    await wait_turn_end(page)
    await asyncio.sleep(0.3)  # the session is read again after the continuation: still one message
    stop.set()
    await watcher
    assert set(seen) == {(1, 1)}, f"a second message or card showed up: {sorted(set(seen))}"
    await expect(card.locator(".human")).to_have_count(0)
    await expect(card.locator(".output pre")).to_contain_text('"result": 42')

    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(stored[2]["content"])["result"] == 42
    await page.reload()
    await expect(page.locator(".tool")).to_have_attribute("data-state", "done")
    assert await shapes(page) == (1, 1)


async def test_reload_during_the_continuation_shows_it_in_the_same_message(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    # Every model reply of this turn stalls for a while after its first words: the continuation too.
    await send(page, f"Compute it [[mock:stall after=3 seconds=3]] {CALCULATE}")
    card = page.locator(".tool")
    await expect(card).to_have_attribute("data-state", "waiting", timeout=20_000)
    await wait_turn_end(page)
    await card.locator(".approve").click()
    await expect(card).to_have_attribute("data-state", "done")
    await expect(page.locator(".message.assistant.streaming")).to_have_count(1)

    await page.reload()  # the panel finds the running continuation (its stream has the asking message's id)
    await expect(page.locator(".message.assistant.streaming")).to_have_count(1)
    seen: list[tuple[int, int]] = []
    while await page.locator(".message.assistant.streaming").count():
        seen.append(await shapes(page))
        await asyncio.sleep(0.05)
    await wait_turn_end(page)
    assert seen and set(seen) == {(1, 1)}, f"a second message or card showed up: {sorted(set(seen))}"
    await expect(card).to_have_attribute("data-state", "done")
    await expect(page.locator(".message.assistant .text")).to_contain_text("calculate returned")
    assert await shapes(page) == (1, 1)


async def test_approving_a_call_of_a_message_sent_elsewhere_without_a_client_id_keeps_one_message(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    """A message another client sent without `client_message_id`: the panel cannot tell its turn by its id, yet the
    continuation of its answered calls is not taken for the reply to it."""
    sid = await new_session(api)
    await open_panel(page, live, sid)
    r = await api.post(
        f"/api/chat/sessions/{sid}/stream", json={"message": f"Go [[mock:stall after=3 seconds=2]] {CALCULATE}"}
    )
    assert r.status_code == 200
    card = page.locator(".tool")
    await expect(card).to_have_attribute("data-state", "waiting")
    await wait_turn_end(page)

    await card.locator(".approve").click()
    await expect(page.locator(".message.assistant.streaming")).to_have_count(1)
    await page.reload()  # the session is read while the continuation runs
    await expect(page.locator(".message.assistant.streaming")).to_have_count(1)
    seen: list[tuple[int, int]] = []
    while await page.locator(".message.assistant.streaming").count():
        seen.append(await shapes(page))
        await asyncio.sleep(0.05)
    await wait_turn_end(page)
    assert seen and set(seen) == {(1, 1)}, f"the reply lost its card or was shown twice: {sorted(set(seen))}"
    await expect(page.locator(".message.assistant .text")).to_contain_text("calculate returned")


async def test_deny_with_a_reason_after_a_reload_shows_the_call_denied(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, f"Compute it {CALCULATE}")
    await expect(page.locator(".tool")).to_have_attribute("data-state", "waiting")
    await wait_turn_end(page)

    # The call waits in the session: a reload shows its buttons again, and they work.
    await page.reload()
    card = page.locator(".tool")
    await expect(card).to_have_attribute("data-state", "waiting")
    await card.locator(".deny-reason").fill("not on a Sunday")
    await card.locator(".deny").click()
    await expect(card).to_have_attribute("data-state", "denied")
    await expect(card.locator(".tool-state")).to_have_text("denied")
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant .text")).to_contain_text("calculate returned")
    assert await shapes(page) == (1, 1)

    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    denial = json.loads(stored[2]["content"])["error"]
    assert denial["type"] == "denied" and "not on a Sunday" in denial["message"]
    assert "denied" in stored[3]["content"]  # the model read the denial
    await page.reload()
    await expect(page.locator(".tool")).to_have_attribute("data-state", "denied")
    await expect(page.locator(".tool .human")).to_have_count(0)


async def test_ask_user_is_answered_with_a_choice_button(page: Page, live: LiveServer, api: httpx.AsyncClient) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, f"Paint it {ASK_COLOUR}")

    card = page.locator(".tool")
    await expect(card).to_have_attribute("data-state", "waiting")
    await expect(card.locator(".tool-state")).to_have_text("question")
    await expect(card.locator(".question")).to_have_text("Which colour?")
    await expect(card.locator(".choice")).to_have_text(["red", "blue"])
    await expect(card.locator(".answer-input")).to_be_visible()
    await wait_turn_end(page)

    await card.locator(".choice", has_text="blue").click()
    await expect(card).to_have_attribute("data-state", "done")
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant .text")).to_contain_text("ask_user returned: blue")
    assert await shapes(page) == (1, 1)
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[2]["content"] == "blue"
    r = await api.get(f"/api/chat/sessions/{sid}")
    assert r.json()["awaiting"] == []


async def test_ask_user_is_answered_in_the_text_field_after_a_reload(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, f"Paint it {ASK_COLOUR}")
    await expect(page.locator(".tool .question")).to_have_text("Which colour?")
    await wait_turn_end(page)
    await page.reload()

    card = page.locator(".tool")
    await card.locator(".answer-input").fill("green, please")
    await card.locator(".answer-input").press("Enter")
    await expect(card).to_have_attribute("data-state", "done")
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant .text")).to_contain_text("ask_user returned: green, please")
    assert await shapes(page) == (1, 1)


async def test_an_answer_the_server_did_not_take_keeps_what_was_typed_and_retry_sends_it(
    page: Page, page_errors: PageErrors, live: LiveServer, api: httpx.AsyncClient
) -> None:
    # The first answer meets a busy server (as a pod at its cap of turns answers): the typed answer must not be lost
    # with the controls it was typed in, and Retry sends it.
    page_errors.expected.append("/tool-calls/")
    refused: list[str] = []

    async def refuse_once(route: Route) -> None:
        if refused:
            await route.continue_()
            return
        refused.append(route.request.url)
        error = {"code": "overloaded", "message": "This server is busy; try again shortly."}
        await route.fulfill(status=503, content_type="application/json", body=json.dumps({"error": error}))

    await page.route("**/tool-calls/*/output", refuse_once)
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, f"Paint it {ASK_COLOUR}")
    await expect(page.locator(".tool .question")).to_have_text("Which colour?")
    await wait_turn_end(page)

    card = page.locator(".tool")
    await card.locator(".answer-input").fill("green, please")
    await card.locator(".answer-input").press("Enter")
    await expect(page.locator(".error-box .error-text")).to_have_text("This server is busy; try again shortly.")
    await expect(card).to_have_attribute("data-state", "waiting")
    await expect(card.locator(".answer-input")).to_have_value("green, please")
    await expect(card.locator(".answer-input")).to_be_enabled()

    await page.locator(".error-box .retry").click()
    await expect(card).to_have_attribute("data-state", "done")
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant .text")).to_contain_text("ask_user returned: green, please")
    await expect(page.locator(".error-box")).to_have_count(0)
    assert len(refused) == 1
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[2]["content"] == "green, please"


def host_page(panel_url: str) -> str:
    """The host app: a page with a Buy button that embeds the panel and offers it `highlight_element`."""
    return f"""<!doctype html>
<button id="buy">Buy</button>
<iframe id="copilot" src="{panel_url}" style="width: 900px; height: 600px"></iframe>
<script>
  const frame = document.getElementById("copilot");
  const panelOrigin = new URL(frame.src).origin;
  window.toolCalls = [];
  addEventListener("message", (event) => {{
    if (event.source !== frame.contentWindow || event.origin !== panelOrigin) return;
    const data = event.data;
    if (data.type === "copilot:ready") {{
      const tools = [{json.dumps(HIGHLIGHT)}];
      frame.contentWindow.postMessage({{type: "copilot:register-tools", tools}}, panelOrigin);
    }} else if (data.type === "copilot:tool-call" && data.toolName === "highlight_element") {{
      window.toolCalls.push(data);
      const element = document.querySelector(data.input.selector);
      const reply = {{type: "copilot:tool-result", toolCallId: data.toolCallId}};
      if (element) {{
        element.classList.add("highlighted");
        reply.output = {{highlighted: true, text: element.textContent}};
      }} else {{
        reply.error = "no element matches " + data.input.selector;
      }}
      frame.contentWindow.postMessage(reply, panelOrigin);
    }}
  }});
</script>"""


class HostApp:
    """The host app's page, served on its own port (another origin than the panel's; a real loopback server, since
    Chromium blocks a public page, e.g. one served by a route handler, from framing a local one)."""

    def __init__(self, html: str) -> None:
        page = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HostApp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def open_host(page: Page, host: HostApp) -> list[dict[str, Any]]:
    """Open the host page; the bodies of the stream requests the panel makes are collected in the list returned."""
    bodies: list[dict[str, Any]] = []

    def collect(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/stream"):
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", collect)
    await page.goto(host.url)
    return bodies


async def test_host_page_runs_a_frontend_tool_over_post_message(
    browser: Browser, page_errors: PageErrors, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    page = page_errors.watch(await browser.new_page())
    page.set_default_timeout(15_000)
    with HostApp(host_page(f"{live.url}/#s={sid}")) as host:
        bodies = await open_host(page, host)
        await use_frontend_tool(page, api, sid, bodies)
    await page.close()


async def use_frontend_tool(page: Page, api: httpx.AsyncClient, sid: str, bodies: list[dict[str, Any]]) -> None:
    panel = page.frame_locator("#copilot")
    await expect(panel.locator(".session.current")).to_have_count(1)
    # A page inside the panel's frame is not its parent: what it posts is not read.
    await (
        page.frame_locator("#copilot")
        .locator("body")
        .evaluate(
            "() => window.postMessage({type: 'copilot:register-tools', tools: [{name: 'steal', inputSchema: {}}]}, '*')"
        )
    )
    await asyncio.sleep(0.2)

    await panel.locator("#input").fill(f"Show me the buy button {CALL_HIGHLIGHT}")
    await panel.locator("#input").press("Enter")
    card = panel.locator(".tool")
    await expect(card).to_have_attribute("data-state", "done")
    await expect(page.locator("#buy")).to_have_class("highlighted")
    await expect(panel.locator(".message.assistant .text")).to_contain_text('{"highlighted":true,"text":"Buy"}')
    await expect(panel.locator(".message.assistant.streaming")).to_have_count(0)
    await expect(panel.locator(".message.assistant")).to_have_count(1)
    await expect(panel.locator(".tool")).to_have_count(1)

    calls = await page.evaluate("window.toolCalls")
    assert [(c["toolName"], c["input"]) for c in calls] == [("highlight_element", {"selector": "#buy"})]
    assert [b.get("tools") for b in bodies] == [[HIGHLIGHT]]  # the host's tools went with the message
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(stored[2]["content"]) == {"highlighted": True, "text": "Buy"}


async def test_host_page_error_reaches_the_model_and_a_frontend_call_waiting_at_reload_runs_again(
    browser: Browser, page_errors: PageErrors, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    # The call is made while no host page runs it (the panel on its own): it waits in the session.
    first = page_errors.watch(await browser.new_page())
    await open_panel(first, live, sid)
    r = await api.post(
        f"/api/chat/sessions/{sid}/stream",
        json={"message": '[[mock:tool name=highlight_element args={"selector": "#gone"}]]', "tools": [HIGHLIGHT]},
    )
    assert r.status_code == 200
    await expect(first.locator(".tool")).to_have_attribute("data-state", "waiting")
    await expect(first.locator(".tool .human")).to_contain_text("Waiting for the app")
    await first.close()

    # Embedded in the host page, the panel hands the waiting call to the host, whose error the model then reads.
    page = page_errors.watch(await browser.new_page())
    page.set_default_timeout(15_000)
    with HostApp(host_page(f"{live.url}/#s={sid}")) as host:
        await open_host(page, host)
        panel = page.frame_locator("#copilot")
        await expect(panel.locator(".tool")).to_have_attribute("data-state", "error")
        await expect(panel.locator(".message.assistant .text")).to_contain_text("no element matches #gone")
        await expect(panel.locator(".message.assistant.streaming")).to_have_count(0)
        await expect(panel.locator(".message.assistant")).to_have_count(1)
        assert len(await page.evaluate("window.toolCalls")) == 1
    await page.close()


async def test_the_readme_example_of_a_host_tool_works(
    browser: Browser, page_errors: PageErrors, live: LiveServer, api: httpx.AsyncClient
) -> None:
    """The README's `highlight_element` host page, as written, with the panel's address put in."""
    [example] = [b for b in re.findall(r"```html\n(.*?)```", README.read_text(), re.S) if "highlight_element" in b]
    sid = await new_session(api)
    html = example.replace('src="https://copilot.example.com/"', f'src="{live.url}/#s={sid}"')
    html = html.replace('"https://copilot.example.com"', f'"{live.url}"')
    page = page_errors.watch(await browser.new_page())
    page.set_default_timeout(15_000)
    with HostApp(f'<!doctype html><p id="total">Total: 42</p>{html}') as host:
        await page.goto(host.url)
        panel = page.frame_locator("#copilot")
        await panel.locator("#input").fill(
            'Where is the total? [[mock:tool name=highlight_element args={"selector": "#total"}]]'
        )
        await panel.locator("#input").press("Enter")
        await expect(page.locator("#total")).to_have_class("copilot-highlight")
        await expect(panel.locator(".tool")).to_have_attribute("data-state", "done")
        await expect(panel.locator(".message.assistant .text")).to_contain_text('{"highlighted":true}')
    await page.close()


async def test_tools_registered_from_another_origin_than_the_configured_host_are_ignored(
    browser: Browser, page_errors: PageErrors, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    page = page_errors.watch(await browser.new_page())
    page.set_default_timeout(15_000)
    # The panel is told its host is https://app.example.com: the page that embeds it here is not.
    with HostApp(host_page(f"{live.url}/?host_origin=https://app.example.com#s={sid}")) as host:
        bodies = await open_host(page, host)
        panel = page.frame_locator("#copilot")
        await expect(panel.locator(".session.current")).to_have_count(1)
        await asyncio.sleep(0.3)  # time for the host page's registration to arrive, were it read
        await panel.locator("#input").fill("Hi there")
        await panel.locator("#input").press("Enter")
        await expect(panel.locator(".message.assistant .text")).to_contain_text("Hi")
        assert len(bodies) == 1 and "tools" not in bodies[0]
    await page.close()


async def test_two_waiting_calls_continue_once_both_are_answered(
    page: Page, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    await open_panel(page, live, sid)
    await send(page, f"Both {CALCULATE} {ASK_COLOUR}")
    cards = page.locator(".tool")
    await expect(cards).to_have_count(2)
    await expect(cards.nth(0).locator(".approve")).to_be_visible()
    await expect(cards.nth(1).locator(".question")).to_have_text("Which colour?")
    await wait_turn_end(page)

    await cards.nth(0).locator(".approve").click()
    # Answered; nothing goes on while the question waits.
    await expect(cards.nth(0)).to_have_attribute("data-state", "answered")
    await expect(cards.nth(0).locator(".human")).to_have_count(0)
    await expect(cards.nth(1)).to_have_attribute("data-state", "waiting")
    await expect(page.locator("#send")).to_be_enabled()
    await cards.nth(1).locator(".choice", has_text="red").click()
    await expect(cards.nth(0)).to_have_attribute("data-state", "done")
    await expect(cards.nth(1)).to_have_attribute("data-state", "done")
    await wait_turn_end(page)
    await expect(page.locator(".message.assistant .text")).to_contain_text("ask_user returned: red")
    assert await shapes(page) == (1, 2)
    stored = await stored_messages(api, sid)
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "tool", "assistant"]


async def test_the_host_page_cannot_answer_a_call_it_was_not_handed(
    browser: Browser, page_errors: PageErrors, live: LiveServer, api: httpx.AsyncClient
) -> None:
    sid = await new_session(api)
    page = page_errors.watch(await browser.new_page())
    page.set_default_timeout(15_000)
    with HostApp(host_page(f"{live.url}/#s={sid}")) as host:
        await open_host(page, host)
        panel = page.frame_locator("#copilot")
        await panel.locator("#input").fill(f"Paint it {ASK_COLOUR}")
        await panel.locator("#input").press("Enter")
        await expect(panel.locator(".tool .question")).to_have_text("Which colour?")
        [call] = (await api.get(f"/api/chat/sessions/{sid}")).json()["awaiting"]
        # The question is the user's to answer: a result the host page posts for it is not read.
        await page.evaluate(
            """(id) => document.getElementById("copilot").contentWindow.postMessage(
                 {type: "copilot:tool-result", toolCallId: id, output: "red"}, new URL(frame.src).origin)""",
            call["tool_call_id"],
        )
        await asyncio.sleep(0.5)
        await expect(panel.locator(".tool")).to_have_attribute("data-state", "waiting")
        assert [c["tool_call_id"] for c in (await api.get(f"/api/chat/sessions/{sid}")).json()["awaiting"]] == [
            call["tool_call_id"]
        ]
        assert await page.evaluate("window.toolCalls") == []
    await page.close()
