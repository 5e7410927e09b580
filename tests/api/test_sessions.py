"""The sessions API over real HTTP, real Postgres and Redis."""

import uuid

import asyncpg
import httpx

from backend.store.models import NewMessage
from tests.conftest import LiveServer, auth

ALICE, BOB = auth("alice"), auth("bob")


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: object) -> dict:  # type: ignore[type-arg]
    r = await client.post("/api/chat/sessions", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_crud(client: httpx.AsyncClient) -> None:
    s = await create(client, ALICE, title="First", metadata={"page": "/dashboard"})
    assert s["title"] == "First" and s["metadata"] == {"page": "/dashboard"} and s["message_count"] == 0

    got = (await client.get(f"/api/chat/sessions/{s['id']}", headers=ALICE)).json()
    assert got["id"] == s["id"] and got["messages"] == [] and got["next_after"] is None

    r = await client.patch(f"/api/chat/sessions/{s['id']}", json={"title": "Renamed"}, headers=ALICE)
    assert r.status_code == 200 and r.json()["title"] == "Renamed"
    assert (await client.get(f"/api/chat/sessions/{s['id']}", headers=ALICE)).json()["title"] == "Renamed"

    assert (await client.delete(f"/api/chat/sessions/{s['id']}", headers=ALICE)).status_code == 204
    assert (await client.get(f"/api/chat/sessions/{s['id']}", headers=ALICE)).status_code == 404
    assert (await client.delete(f"/api/chat/sessions/{s['id']}", headers=ALICE)).status_code == 404


async def test_another_users_session_looks_missing_on_every_endpoint(client: httpx.AsyncClient) -> None:
    s = await create(client, ALICE, title="private")
    missing = str(uuid.uuid4())
    for sid in (s["id"], missing):
        calls = [
            client.get(f"/api/chat/sessions/{sid}", headers=BOB),
            client.patch(f"/api/chat/sessions/{sid}", json={"title": "pwned"}, headers=BOB),
            client.delete(f"/api/chat/sessions/{sid}", headers=BOB),
        ]
        for call in calls:
            r = await call
            assert r.status_code == 404, r.text
            assert r.json() == {"error": {"code": "not_found", "message": "session not found"}}
    listed = (await client.get("/api/chat/sessions", headers=BOB)).json()
    assert listed["sessions"] == []
    still = (await client.get(f"/api/chat/sessions/{s['id']}", headers=ALICE)).json()
    assert still["title"] == "private"


async def test_session_list_pages_newest_first(client: httpx.AsyncClient) -> None:
    made = [await create(client, ALICE, title=f"s{i}") for i in range(7)]
    await create(client, BOB, title="bob's")
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/chat/sessions", params=params, headers=ALICE)).json()
        seen += [s["title"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [s["title"] for s in reversed(made)]


async def test_messages_page_by_sequence(client: httpx.AsyncClient, server: LiveServer) -> None:
    s = await create(client, ALICE)
    store = server.app.state.runtime.sessions
    await store.append(uuid.UUID(s["id"]), [NewMessage("user", f"m{i}") for i in range(1, 8)])
    contents, after = [], 0
    while after is not None:
        page = (
            await client.get(f"/api/chat/sessions/{s['id']}", params={"after": after, "limit": 3}, headers=ALICE)
        ).json()
        contents += [m["content"] for m in page["messages"]]
        after = page["next_after"]
    assert contents == [f"m{i}" for i in range(1, 8)]


async def test_bad_input_gets_a_clear_4xx_and_writes_nothing(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    cases = [
        ("GET", "/api/chat/sessions/not-a-uuid", None, 422),
        ("POST", "/api/chat/sessions", {"title": 5}, 422),
        ("POST", "/api/chat/sessions", {"title": "x" * 201}, 422),
        ("POST", "/api/chat/sessions", {"unknown": 1}, 422),
        ("POST", "/api/chat/sessions", {"metadata": {"blob": "x" * 1_100_000}}, 413),
        ("GET", "/api/chat/sessions?limit=0", None, 422),
        ("GET", "/api/chat/sessions?cursor=%%%", None, 400),
    ]
    for method, url, body, status in cases:
        r = await client.request(method, url, json=body, headers=ALICE)
        assert r.status_code == status, (url, body and str(body)[:40], r.text[:200])
        error = r.json()["error"]
        assert error["code"] and error["message"]
    r = await client.post(
        "/api/chat/sessions", content=b"{not json", headers=ALICE | {"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert await db.fetchval("SELECT count(*) FROM chat_sessions") == 0


async def test_requests_without_a_valid_token_are_refused(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    bad_tokens = [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer not-a-jwt"},
        auth("alice", secret="another-secret-that-is-long-enough-for-hs"),
        auth("alice", ttl=-10),
    ]
    for headers in bad_tokens:
        r = await client.post("/api/chat/sessions", json={}, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert await db.fetchval("SELECT count(*) FROM chat_sessions") == 0


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/api/chat/sessions/{session_id}" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200
