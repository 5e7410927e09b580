"""The panel's page and assets (`backend/api/panel.py`): served without a token, API routes keep precedence."""

from __future__ import annotations

import re

import httpx

from backend.api.panel import STATIC_DIR


async def test_page_is_served_at_the_root_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="static/js/app.js"></script>' in r.text
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert r.headers["referrer-policy"] == "no-referrer"


async def test_every_asset_the_page_loads_is_served(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    pending = re.findall(r'(?:src|href)="(static/[^"]+)"', page)
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        r = await client.get(f"/{path}")
        assert r.status_code == 200, path
        if path.endswith(".js"):
            assert "javascript" in r.headers["content-type"]
            folder = path.rsplit("/", 1)[0]
            pending += [f"{folder}/{name}" for name in re.findall(r'from "\./([\w-]+\.js)"', r.text)]
    shipped = {f"static/{p.relative_to(STATIC_DIR)}" for p in STATIC_DIR.rglob("*.*") if p.name != "index.html"}
    assert seen == shipped  # each file is used, and each used file is shipped


async def test_api_and_docs_keep_their_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    assert "/" not in (await client.get("/openapi.json")).json()["paths"]
    for method, path in [("GET", "/api/nope"), ("POST", "/api/chat/nope"), ("GET", "/static/nope.js")]:
        r = await client.request(method, path)
        assert r.status_code == 404, (method, path)
        assert r.json()["error"]["code"] == "not_found"
    assert (await client.get("/api/chat/sessions")).status_code == 401  # the page is public, the API is not
