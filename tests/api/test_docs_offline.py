"""The API docs and the site icon (`backend/api/docs.py`): every asset comes from the service itself, so the pages
render on a machine without network."""

from __future__ import annotations

import re

import httpx
import pytest

# Every URL a page names: attributes, and the script's `url: '...'` (Swagger UI's OpenAPI document).
_URLS = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


def _urls(page: str) -> list[str]:
    return [a or b for a, b in _URLS.findall(page)]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_load_only_assets_of_the_service(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, no web font
    urls = _urls(r.text)
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.")


async def test_swagger_ui_is_a_version_that_renders_openapi_3_1(client: httpx.AsyncClient) -> None:
    # FastAPI documents its API as OpenAPI 3.1, which Swagger UI 4 refuses to render ("Unable to render this
    # definition"): the shipped bundle must be Swagger UI 5 or later.
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.1")
    script = next(u for u in _urls((await client.get("/docs")).text) if u.endswith("swagger-ui-bundle.js"))
    bundle = (await client.get(script)).text
    assert "isOAS31" in bundle  # Swagger UI 5's OpenAPI 3.1 support (absent from Swagger UI 4's bundle)


async def test_favicon_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/favicon.ico")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert r.text.lstrip().startswith("<svg")


async def test_panel_links_its_icon(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    icon = re.search(r'<link rel="icon"[^>]*href="([^"]+)"', page)
    assert icon is not None
    assert (await client.get(f"/{icon.group(1)}")).status_code == 200
