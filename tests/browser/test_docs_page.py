"""/docs and the panel in a browser with no network beyond the service: Swagger UI renders the API, and the panel
asks for nothing that is missing (its icon included)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.async_api import Page, Request, Route, expect

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


async def _offline(page: Page, live: LiveServer, foreign: list[str]) -> None:
    """Any request to another origin (a CDN) fails, as on a machine without network, and is recorded."""
    origin = urlsplit(live.url).netloc

    async def route(route: Route, request: Request) -> None:
        if urlsplit(request.url).netloc == origin:
            await route.continue_()
        else:
            foreign.append(request.url)
            await route.abort("internetdisconnected")

    await page.route("**/*", route)


async def test_swagger_ui_renders_offline(page: Page, live: LiveServer) -> None:
    foreign: list[str] = []
    await _offline(page, live, foreign)
    await page.goto(f"{live.url}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("copilot-chat")
    await expect(page.locator(".opblock").first).to_be_visible()
    assert foreign == []


async def test_panel_loads_nothing_missing(page: Page, live: LiveServer) -> None:
    missing: list[str] = []
    page.on("response", lambda r: missing.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    await page.goto(f"{live.url}/")
    await page.wait_for_load_state("networkidle")
    icon = await page.evaluate("fetch('/favicon.ico').then(r => r.status)")
    assert icon == 200
    assert missing == []
