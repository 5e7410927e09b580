"""A session's own MCP servers through the API and full turns: the SDK's streamable HTTP server
(tests/tools/mcp/servers.py), the service over HTTP, the mock model calling the tools by their namespaced names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from backend.config import Settings
from backend.errors import StorageUnavailable
from backend.runtime import Runtime
from backend.store.mcp_servers import SessionMcpServer
from backend.tools.mcp.sealed_headers import HeaderSealer
from backend.tools.mcp.session_servers import SessionMcpServers
from backend.tools.mcp.url_policy import UrlPolicy
from tests.api.test_chat_stream import ALICE, assert_well_formed, new_session
from tests.conftest import LiveServer, auth
from tests.sse import read_stream
from tests.tools.mcp.servers import HttpMcpServer
from tests.tools.mcp.test_turns import outputs

pytestmark = pytest.mark.slow

TOKEN = "test-only-session-mcp-token"
BOB = auth("bob")
KEY = Fernet.generate_key().decode()


@pytest.fixture
async def http_mcp() -> AsyncIterator[HttpMcpServer]:
    async with HttpMcpServer(TOKEN) as server:
        yield server


def allowing(settings: Settings, *, networks: list[str] | None = None, **update: Any) -> Settings:
    """Users may add servers on 127.0.0.1 (loopback: allowed explicitly, as `networks` says)."""
    return settings.model_copy(
        update={
            "mcp_allowed_hosts": ["127.0.0.1", "localhost"],
            "mcp_allowed_networks": ["127.0.0.0/8"] if networks is None else networks,
            "mcp_headers_key": SecretStr(KEY),
            "mcp_reconnect_max_seconds": 0.5,
            **update,
        }
    )


def servers_url(sid: str) -> str:
    return f"/api/chat/sessions/{sid}/mcp-servers"


async def add(client: httpx.AsyncClient, sid: str, url: str, headers: dict[str, str] = ALICE) -> httpx.Response:
    body = {"name": "mine", "url": url, "headers": {"Authorization": f"Bearer {TOKEN}"}}
    return await client.post(servers_url(sid), json=body, headers=headers)


async def send(client: httpx.AsyncClient, sid: str, message: str, headers: dict[str, str] = ALICE) -> bytes:
    _, body = await read_stream(
        client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=headers
    )
    assert_well_formed(body)
    return body


ADD = '[[mock:tool name=mine__add args={"a": 40, "b": 2}]]'


def runtime(live: LiveServer) -> Runtime:
    value: Runtime = live.app.state.runtime
    return value


async def test_a_sessions_server_gives_its_turns_tools_until_it_is_removed(
    chat_settings: Settings, http_mcp: HttpMcpServer
) -> None:
    async with LiveServer(allowing(chat_settings)) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        added = await add(client, sid, http_mcp.url)
        assert added.status_code == 201, added.text
        assert added.json()["header_names"] == ["Authorization"]
        listed = await client.get(servers_url(sid), headers=ALICE)
        assert [s["name"] for s in listed.json()["servers"]] == ["mine"]
        assert TOKEN not in added.text + listed.text  # headers go in, never out

        body = await send(client, sid, ADD)
        assert outputs(body)[0]["output"] == {"result": 42}
        assert runtime(live).session_mcp.open_count(UUID(sid)) == 1

        removed = await client.delete(f"{servers_url(sid)}/mine", headers=ALICE)
        assert removed.status_code == 204
        assert runtime(live).session_mcp.open_count(UUID(sid)) == 0
        result = outputs(await send(client, sid, ADD))[0]
        assert result["type"] == "tool-output-error" and "unknown" in result["errorText"].lower()
        again = await client.delete(f"{servers_url(sid)}/mine", headers=ALICE)
        assert again.status_code == 404


async def test_no_user_reaches_another_users_servers(chat_settings: Settings, http_mcp: HttpMcpServer) -> None:
    async with LiveServer(allowing(chat_settings)) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        alices = await new_session(client)
        assert (await add(client, alices, http_mcp.url)).status_code == 201
        assert outputs(await send(client, alices, ADD))[0]["output"] == {"result": 42}  # Alice's connection is open

        assert (await client.get(servers_url(alices), headers=BOB)).status_code == 404
        assert (await add(client, alices, http_mcp.url, headers=BOB)).status_code == 404
        assert (await client.delete(f"{servers_url(alices)}/mine", headers=BOB)).status_code == 404

        bobs = await new_session(client, headers=BOB)
        assert (await client.get(servers_url(bobs), headers=BOB)).json() == {"servers": []}
        result = outputs(await send(client, bobs, ADD, headers=BOB))[0]
        assert result["type"] == "tool-output-error" and "unknown" in result["errorText"].lower()
        assert outputs(await send(client, alices, ADD))[0]["output"] == {"result": 42}  # still Alice's


async def test_the_feature_is_off_without_allowed_hosts(chat_settings: Settings, http_mcp: HttpMcpServer) -> None:
    async with LiveServer(chat_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        for response in (await add(client, sid, http_mcp.url), await client.get(servers_url(sid), headers=ALICE)):
            assert response.status_code == 403
            assert "COPILOT_MCP_ALLOWED_HOSTS" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9/mcp", "resolves to an address this service may not call"),  # loopback, not allowed
        ("http://localhost:9/mcp", "resolves to an address this service may not call"),
        ("http://169.254.169.254/latest/meta-data", "is not among the hosts"),  # metadata: not an allowed host
        ("http://mcp.example.com/mcp", "is not among the hosts"),
        ("ftp://127.0.0.1/mcp", "must start with http"),
        ("http://user:pw@127.0.0.1/mcp", "credentials"),
    ],
)
async def test_a_url_the_operator_did_not_allow_is_refused(chat_settings: Settings, url: str, why: str) -> None:
    settings = allowing(chat_settings, networks=[])
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        response = await add(client, sid, url)
        assert response.status_code == 400, response.text
        assert why in response.json()["error"]["message"]
        assert (await client.get(servers_url(sid), headers=ALICE)).json() == {"servers": []}


async def test_a_stored_server_whose_address_is_no_longer_allowed_is_refused_at_connect_time(
    chat_settings: Settings, http_mcp: HttpMcpServer, pool: asyncpg.Pool
) -> None:
    """As if the host resolved to a public address when added and to loopback now (DNS rebinding)."""
    settings = allowing(chat_settings, networks=[])
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        sealed = HeaderSealer(KEY).seal({"Authorization": f"Bearer {TOKEN}"})
        await pool.execute(
            "INSERT INTO chat_session_mcp_servers (session_id, name, url, headers) VALUES ($1, 'mine', $2, $3)",
            UUID(sid),
            http_mcp.url,
            sealed,
        )
        result = outputs(await send(client, sid, ADD))[0]
        assert result["type"] == "tool-output-error"  # no tools were listed: the request never left
        assert "unknown" in result["errorText"].lower()


async def test_bad_input_gets_a_clear_error(chat_settings: Settings, http_mcp: HttpMcpServer) -> None:
    settings = allowing(chat_settings, mcp_session_servers_max=1)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        url = servers_url(sid)
        for body in (
            {"name": "has space", "url": http_mcp.url},
            {"name": "x", "url": http_mcp.url, "headers": {"Bad Header": "v"}},
            {"name": "x", "url": http_mcp.url, "headers": {"X-Token": "a\r\nInjected: 1"}},
            {"name": "x", "url": http_mcp.url, "extra": 1},
            {"name": "x", "url": http_mcp.url, "headers": {"Host": "internal.example.com"}},
            {"name": "x", "url": http_mcp.url, "headers": {"Mcp-Session-Id": "someone-elses"}},
        ):
            response = await client.post(url, json=body, headers=ALICE)
            assert response.status_code == 422, (body, response.text)
        assert (await add(client, sid, http_mcp.url)).status_code == 201
        taken = await add(client, sid, http_mcp.url)
        assert taken.status_code == 409 and "already has" in taken.json()["error"]["message"]
        full = await client.post(url, json={"name": "other", "url": http_mcp.url}, headers=ALICE)
        assert full.status_code == 409 and "at most 1" in full.json()["error"]["message"]


async def test_the_sweeper_closes_an_idle_connection_and_the_next_turn_opens_it_again(
    chat_settings: Settings, http_mcp: HttpMcpServer
) -> None:
    settings = allowing(chat_settings, mcp_session_idle_seconds=0.5)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        assert (await add(client, sid, http_mcp.url)).status_code == 201
        assert outputs(await send(client, sid, ADD))[0]["output"] == {"result": 42}
        servers = runtime(live).session_mcp
        for _ in range(200):
            if servers.open_count(UUID(sid)) == 0:
                break
            await asyncio.sleep(0.05)
        assert servers.open_count(UUID(sid)) == 0
        assert outputs(await send(client, sid, ADD))[0]["output"] == {"result": 42}


class _OneServerStore:
    """A store holding one server (of one session); with `fail_after`, Postgres stops answering after so many reads."""

    def __init__(self, server: SessionMcpServer, fail_after: int | None = None) -> None:
        self.server = server
        self.fail_after = fail_after
        self.reads = 0

    async def list(self, session_id: UUID) -> list[SessionMcpServer]:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise StorageUnavailable("Postgres is down")  # what the real store raises for an outage
        return [self.server] if session_id == self.server.session_id else []


def unit_servers(store: _OneServerStore, *, idle_seconds: float = 300) -> SessionMcpServers:
    return SessionMcpServers(
        store,  # type: ignore[arg-type]
        HeaderSealer(KEY),
        UrlPolicy(["127.0.0.1"], ["127.0.0.0/8"]),
        tool_timeout_seconds=5,
        connect_timeout_seconds=5,
        tools_ttl_seconds=300,
        reconnect_max_seconds=1,
        idle_seconds=idle_seconds,
        max_servers=5,
    )


def stored(url: str) -> SessionMcpServer:
    sealed = HeaderSealer(KEY).seal({"Authorization": f"Bearer {TOKEN}"})
    return SessionMcpServer(uuid4(), "mine", url, sealed, datetime.now(UTC))


async def test_a_connection_is_closed_once_idle_only(http_mcp: HttpMcpServer) -> None:
    store = _OneServerStore(stored(http_mcp.url))
    sid = store.server.session_id
    servers = unit_servers(store, idle_seconds=1.0)
    try:
        assert [t.name for t in await servers.tools_for(sid, "alice")][:1] == ["mine__add"]
        await servers.close_idle()
        assert servers.open_count(sid) == 1  # just used
        await asyncio.sleep(1.1)
        await servers.close_idle()
        assert servers.open_count(sid) == 0
        assert "mine__add" in [t.name for t in await servers.tools_for(sid, "alice")]
        assert servers.open_count(sid) == 1
    finally:
        await servers.close()


async def test_a_turn_keeps_the_open_servers_when_the_list_cannot_be_read(http_mcp: HttpMcpServer) -> None:
    store = _OneServerStore(stored(http_mcp.url), fail_after=1)
    sid = store.server.session_id
    servers = unit_servers(store)
    try:
        first = [t.name for t in await servers.tools_for(sid, "alice")]
        assert "mine__add" in first
        assert [t.name for t in await servers.tools_for(sid, "alice")] == first
        assert [t.name for t in await servers.tools_for(uuid4(), "bob")] == []  # nobody else gets them
        assert store.reads == 3
    finally:
        await servers.close()
