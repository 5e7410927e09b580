"""Headless Chromium (Debian's `chromium`, never a downloaded browser) driving the panel of a live server.

The tests skip when no chromium binary is installed (`apt-get install chromium`; CI installs it in `.ci/run`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Error, Page, Request, Response, async_playwright
from pydantic import SecretStr

from backend.config import Settings
from tests.conftest import LiveServer

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WEBHOOK_SECRET = "browser-test-webhook-secret"


def chromium_path() -> str | None:
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary (install Debian's `chromium`, or set CHROMIUM_PATH) for the browser tests")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


class PageErrors:
    """Uncaught exceptions, console errors, server errors (5xx) and requests that failed on the way (other than a
    stream the page let go of) of the pages a test opened; the test fails if any occurred, saying which, so a
    refusal the panel shows only as a note is named in the report."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.expected: list[str] = []
        """Parts of URLs whose server errors and failed requests the test provokes itself."""
        self.refusals: list[str] = []
        """Every 4xx and 5xx the pages got, printed at the end: a failed test's report shows them."""

    def watch(self, page: Page) -> Page:
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("console", self._console)
        page.on("response", self._response)
        page.on("requestfailed", self._request_failed)
        return page

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.refusals.append(f"{response.status} {response.request.method} {response.url}")
        if response.status >= 500 and not self._expected(response.url):
            self.errors.append(f"server error: {response.status} {response.request.method} {response.url}")

    def _request_failed(self, request: Request) -> None:
        # A stream is let go of on every reload, Stop and page close, a request in flight at a reload is aborted by the
        # page itself, and a poll after the test's server stopped finds nobody (teardown); anything else (a reset, an
        # empty response) should have had its answer.
        let_go = request.failure in ("net::ERR_ABORTED", "net::ERR_CONNECTION_REFUSED")
        if let_go or request.url.split("?")[0].endswith("/stream"):
            return
        if not self._expected(request.url):
            self.errors.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _expected(self, url: str) -> bool:
        return any(part in url for part in self.expected)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")


@pytest.fixture
async def page_errors() -> AsyncIterator[PageErrors]:
    errors = PageErrors()
    yield errors
    if errors.refusals:
        print("responses refused:", *errors.refusals, sep="\n  ")
    assert errors.errors == [], errors.errors


@pytest.fixture
async def page(browser: Browser, page_errors: PageErrors) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1000, "height": 720})
    page = page_errors.watch(await context.new_page())
    page.set_default_timeout(15_000)
    yield page
    with contextlib.suppress(Error):  # the browser may be gone already
        await context.close()


@pytest.fixture
def panel_settings(chat_settings: Settings) -> Settings:
    """A development-auth service (no token) on the mock model, with the operation webhook turned on."""
    return chat_settings.model_copy(update={"dev_auth": True, "webhook_secret": SecretStr(WEBHOOK_SECRET)})


@pytest.fixture
async def live(panel_settings: Settings) -> AsyncIterator[LiveServer]:
    async with LiveServer(panel_settings) as server:
        yield server


@pytest.fixture
async def api(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client
