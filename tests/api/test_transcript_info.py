"""`GET /api/chat/sessions/{id}/transcript` and `GET /api/info` over real HTTP, Postgres and Redis."""

from __future__ import annotations

import json
import uuid

import httpx

from backend.config import Settings
from backend.store.models import NewMessage
from tests.conftest import LiveServer, auth
from tests.own_postgres import OwnPostgres

ALICE, BOB = auth("alice"), auth("bob")


async def _session(client: httpx.AsyncClient, title: str | None = "Quarterly report") -> str:
    r = await client.post("/api/chat/sessions", json={"title": title}, headers=ALICE)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_json_transcript_of_1200_messages_comes_out_whole(client: httpx.AsyncClient, server: LiveServer) -> None:
    sid = await _session(client)
    store = server.app.state.runtime.sessions
    for start in range(0, 1200, 300):
        await store.append(uuid.UUID(sid), [NewMessage("user", f"m{i}") for i in range(start, start + 300)])

    r = await client.get(f"/api/chat/sessions/{sid}/transcript", params={"format": "json"}, headers=ALICE)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["id"] == sid and body["title"] == "Quarterly report" and body["message_count"] == 1200
    assert [m["content"] for m in body["messages"]] == [f"m{i}" for i in range(1200)]
    assert [m["sequence"] for m in body["messages"]] == list(range(1, 1201))
    assert set(body["messages"][0]) >= {"id", "role", "tool_calls", "tool_call_id", "created_at"}


async def test_json_transcript_is_the_default_and_empty_sessions_have_no_messages(client: httpx.AsyncClient) -> None:
    sid = await _session(client, title=None)
    r = await client.get(f"/api/chat/sessions/{sid}/transcript", headers=ALICE)
    assert r.status_code == 200 and r.json()["messages"] == [] and r.json()["title"] is None


async def test_markdown_transcript_with_tool_calls(client: httpx.AsyncClient, server: LiveServer) -> None:
    sid = await _session(client)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    await server.app.state.runtime.sessions.append(
        uuid.UUID(sid),
        [
            NewMessage("user", "What is the weather in Oslo?"),
            NewMessage("assistant", None, tool_calls=[call]),
            NewMessage("tool", '{"temp": 3, "note": "```"}', tool_call_id="call_1", name="get_weather"),
            NewMessage("assistant", "It is 3 °C in Oslo."),
        ],
    )
    r = await client.get(f"/api/chat/sessions/{sid}/transcript", params={"format": "markdown"}, headers=ALICE)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/markdown")
    assert r.headers["content-disposition"] == f'attachment; filename="transcript-{sid}.md"'
    text = r.text
    assert text.startswith("# Quarterly report\n")
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## User", "## Assistant", "## Tool result: `get_weather`", "## Assistant"]
    assert "What is the weather in Oslo?" in text and "It is 3 °C in Oslo." in text
    assert 'Tool call `get_weather`:\n\n```json\n{"city": "Oslo"}\n```\n' in text
    # The result holds a fence of its own, so its block is fenced with more backticks.
    assert '````json\n{"temp": 3, "note": "```"}\n````\n' in text
    assert text.index("## User") < text.index("get_weather") < text.index("It is 3 °C")


async def test_transcript_of_another_user_or_no_session_is_404(client: httpx.AsyncClient) -> None:
    sid = await _session(client)
    for fmt in ("json", "markdown"):
        for path in (f"/api/chat/sessions/{sid}", f"/api/chat/sessions/{uuid.uuid4()}"):
            r = await client.get(f"{path}/transcript", params={"format": fmt}, headers=BOB)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "not_found"
    assert (await client.get(f"/api/chat/sessions/{sid}/transcript")).status_code == 401


async def test_transcript_invalid_format_is_422(client: httpx.AsyncClient) -> None:
    sid = await _session(client)
    r = await client.get(f"/api/chat/sessions/{sid}/transcript", params={"format": "pdf"}, headers=ALICE)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_request" and "format" in r.json()["error"]["message"]


async def test_info(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, server = chat
    settings = server.app.state.runtime.settings
    assert (await client.get("/api/info")).status_code == 401

    r = await client.get("/api/info", headers=ALICE)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["model"] == "mock-model" and info["api"] == "chat_completions"
    assert info["version"] == server.app.version
    assert info["tools"] == server.app.state.runtime.tools.schemas() and info["tools"]
    assert all(t["function"]["name"] and "parameters" in t["function"] for t in info["tools"])
    assert info["limits"]["max_body_bytes"] == settings.max_body_bytes
    assert info["limits"]["max_message_chars"] == settings.max_message_chars
    assert info["limits"]["context_window_tokens"] == settings.context_window_tokens
    assert info["limits"]["requests_per_minute"] == 0
    assert info["features"] == {
        "langfuse": False,
        "posthog": False,
        "webhooks": settings.webhook_secret is not None,
        "double_texting": settings.double_texting,
        "development_auth": False,
    }
    # No secret of the settings shows through.
    for secret in (settings.jwt_secret, settings.llm_api_key, settings.webhook_secret):
        if secret is not None:
            assert secret.get_secret_value() not in json.dumps(info)
    assert settings.database_url and settings.database_url not in r.text


async def test_transcript_while_postgres_is_down_is_503_not_a_cut_200(settings: Settings) -> None:
    async with OwnPostgres() as pg:
        on_pg = settings.model_copy(update={"database_url": pg.dsn, "db_pool_min_size": 1})
        async with LiveServer(on_pg) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            sid = await _session(client)
            # The session row is now cached in Redis, so ownership is still known while Postgres is down.
            assert (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).status_code == 200
            await pg.stop()
            r = await client.get(f"/api/chat/sessions/{sid}/transcript", headers=ALICE)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "service_unavailable"
