"""MCP tools through full turns: real MCP servers (stdio and streamable HTTP, tests/tools/mcp/servers.py), the
service over HTTP, the mock model calling the tools by their namespaced names."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from backend.config import Settings
from tests.api.test_chat_stream import ALICE, assert_well_formed, new_session, send
from tests.conftest import LiveServer
from tests.sse import chunks, read_stream
from tests.tools.mcp.servers import HttpMcpServer, stdio_config

pytestmark = pytest.mark.slow

TOKEN = "test-only-mcp-token"
TOKEN_VARIABLE = "TEST_MCP_TOKEN"


@pytest.fixture
async def http_mcp(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HttpMcpServer]:
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    async with HttpMcpServer(TOKEN) as server:
        yield server


def remote_config(url: str, **extra: Any) -> dict[str, Any]:
    return {"url": url, "bearer_token_env": TOKEN_VARIABLE, **extra}


def with_mcp(settings: Settings, servers: dict[str, Any], **update: Any) -> Settings:
    return settings.model_copy(
        update={
            "mcp_servers": json.dumps({"mcpServers": servers}),
            "mcp_reconnect_max_seconds": 0.5,
            **update,
        }
    )


async def info(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/info", headers=ALICE)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def server_state(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    servers = {s["name"]: s for s in (await info(client))["mcp_servers"]}
    return servers[name]


async def wait_for(client: httpx.AsyncClient, name: str, state: str) -> None:
    for _ in range(200):
        if (await server_state(client, name))["state"] == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"MCP server {name!r} never became {state}: {await server_state(client, name)}")


def outputs(body: bytes) -> list[dict[str, Any]]:
    """The tool results of a stream, in the order of the calls (they stream as they finish)."""
    calls = [c["toolCallId"] for c in chunks(body) if c["type"] == "tool-input-available"]
    results = {c["toolCallId"]: c for c in chunks(body) if c["type"] in ("tool-output-available", "tool-output-error")}
    return [results[call] for call in calls]


async def test_tools_of_a_stdio_and_an_http_server_run_in_one_turn(
    chat_settings: Settings, http_mcp: HttpMcpServer
) -> None:
    settings = with_mcp(chat_settings, {"local": stdio_config(), "remote": remote_config(http_mcp.url)})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        described = await info(client)
        schemas = {t["function"]["name"]: t["function"] for t in described["tools"]}
        assert schemas["local__add"]["description"] == "Add two integers."
        assert schemas["local__add"]["parameters"]["properties"].keys() == {"a", "b"}  # the server's JSON Schema
        assert schemas["local__add"]["parameters"]["required"] == ["a", "b"]
        assert "remote__add" in schemas and "calculate" in schemas  # next to the built-in tools
        assert "local__weird_name" in schemas  # `weird.name`, sanitised
        states = {s["name"]: (s["state"], s["transport"], s["error"]) for s in described["mcp_servers"]}
        assert states == {"local": ("ready", "stdio", None), "remote": ("ready", "http", None)}

        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["mcp"]["local"] == {"state": "ready", "tools": 7, "error": None}

        sid = await new_session(client)
        _, body = await send(
            client,
            sid,
            '[[mock:tool name=local__add args={"a": 2, "b": 3}]] [[mock:tool name=remote__add args={"a": 40, "b": 2}]]'
            ' [[mock:tool name=local__weird_name args={"x": 7}]]',
        )
        assert_well_formed(body)
        results = outputs(body)
        assert [r["type"] for r in results] == ["tool-output-available"] * 3
        assert sorted(r["output"]["result"] for r in results) == [5, 7, 42]


async def test_a_tool_error_reaches_the_model_and_the_turn_goes_on(chat_settings: Settings) -> None:
    settings = with_mcp(chat_settings, {"local": stdio_config()})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(
            client,
            sid,
            '[[mock:tool name=local__fail args={"message": "ticket 7 does not exist"}]]'
            ' [[mock:tool name=local__add args={"a": "two"}]]',
        )
        assert_well_formed(body)
        errors = [c for c in outputs(body) if c["type"] == "tool-output-error"]
        assert len(errors) == 2
        assert "ticket 7 does not exist" in errors[0]["errorText"]
        assert "a" in errors[1]["errorText"] and "b" in errors[1]["errorText"]  # the server's validation message
        assert chunks(body)[-1]["finishReason"] == "stop"  # the model answered after seeing the errors


async def test_a_hanging_call_is_cut_at_the_servers_timeout_and_the_server_stays_usable(
    chat_settings: Settings,
) -> None:
    settings = with_mcp(chat_settings, {"local": stdio_config(timeout_seconds=0.5)})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(
            client,
            sid,
            '[[mock:tool name=local__slow args={"seconds": 60}]] [[mock:tool name=local__add args={"a": 1, "b": 1}]]',
        )
        assert_well_formed(body)
        slow, add = outputs(body)
        assert slow["type"] == "tool-output-error" and "timed out after 0.5 seconds" in slow["errorText"]
        assert add["output"] == {"result": 2}  # the parallel call on the same session was not held up
        _, body = await send(client, sid, '[[mock:tool name=local__add args={"a": 2, "b": 2}]]')
        assert outputs(body)[0]["output"] == {"result": 4}
        assert (await server_state(client, "local"))["state"] == "ready"


async def test_a_tool_list_change_is_seen_by_the_next_turn(chat_settings: Settings) -> None:
    settings = with_mcp(chat_settings, {"local": stdio_config()})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        assert "local__later" not in {t["function"]["name"] for t in (await info(client))["tools"]}
        sid = await new_session(client)
        _, body = await send(client, sid, "[[mock:tool name=local__grow args={}]]")
        assert outputs(body)[0]["output"] == {"result": "grown"}
        for _ in range(100):
            if "local__later" in {t["function"]["name"] for t in (await info(client))["tools"]}:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the new tool never joined the registry")
        assert (await server_state(client, "local"))["tools"] == 8
        _, body = await send(client, sid, '[[mock:tool name=local__later args={"word": "hi"}]]')
        assert outputs(body)[0]["output"] == {"result": "HI"}


async def test_a_down_http_server_answers_a_clear_error_and_is_used_again_once_back(
    chat_settings: Settings, http_mcp: HttpMcpServer
) -> None:
    settings = with_mcp(chat_settings, {"remote": remote_config(http_mcp.url)})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        await http_mcp.stop()
        _, body = await send(client, sid, '[[mock:tool name=remote__add args={"a": 1, "b": 2}]]')
        assert_well_formed(body)
        (error,) = outputs(body)
        assert error["type"] == "tool-output-error"
        assert "MCP server 'remote'" in error["errorText"] and "unavailable" in error["errorText"]
        assert chunks(body)[-1]["finishReason"] == "stop"

        await wait_for(client, "remote", "down")
        ready = await client.get("/health/ready")
        assert ready.status_code == 200  # a down MCP server does not make the pod unready
        assert ready.json()["mcp"]["remote"]["state"] == "down" and ready.json()["mcp"]["remote"]["error"]
        assert "remote__add" in {t["function"]["name"] for t in (await info(client))["tools"]}  # kept while down

        await http_mcp.start()
        await wait_for(client, "remote", "ready")
        _, body = await send(client, sid, '[[mock:tool name=remote__add args={"a": 1, "b": 2}]]')
        assert outputs(body)[0]["output"] == {"result": 3}


async def test_a_server_down_at_startup_does_not_stop_the_service_and_joins_when_it_answers(
    chat_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    later = HttpMcpServer(TOKEN)
    settings = with_mcp(chat_settings, {"remote": remote_config(later.url)}, mcp_startup_wait_seconds=1.0)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        state = await server_state(client, "remote")
        assert state["state"] in ("down", "connecting") and state["tools"] == 0
        assert not any(t["function"]["name"].startswith("remote__") for t in (await info(client))["tools"])
        assert (await client.get("/health/ready")).status_code == 200
        async with later:
            await wait_for(client, "remote", "ready")
            sid = await new_session(client)
            _, body = await send(client, sid, '[[mock:tool name=remote__add args={"a": 5, "b": 5}]]')
            assert outputs(body)[0]["output"] == {"result": 10}


async def test_a_wrong_bearer_token_leaves_the_server_down_with_the_reason(
    chat_settings: Settings, http_mcp: HttpMcpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRONG_MCP_TOKEN", "not-the-token")
    settings = with_mcp(chat_settings, {"remote": {"url": http_mcp.url, "bearer_token_env": "WRONG_MCP_TOKEN"}})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        await wait_for(client, "remote", "down")
        assert (await server_state(client, "remote"))["error"] == "HTTP 401"
        shown = (await client.get("/api/info", headers=ALICE)).text + (await client.get("/health/ready")).text
        assert "not-the-token" not in shown and "127.0.0.1" not in shown  # no token, no address


async def test_a_stdio_server_that_dies_is_started_again(chat_settings: Settings) -> None:
    settings = with_mcp(chat_settings, {"local": stdio_config()})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, "[[mock:tool name=local__pid args={}]]")
        first = outputs(body)[0]["output"]["result"]
        os.kill(first, signal.SIGKILL)
        for _ in range(200):
            _, body = await send(client, sid, "[[mock:tool name=local__pid args={}]]")
            result = outputs(body)[0]
            if result["type"] == "tool-output-available":
                break
            assert "MCP server 'local'" in result["errorText"]  # meanwhile: a clear error, the turn goes on
            await asyncio.sleep(0.05)
        assert result["output"]["result"] != first


async def test_the_tool_list_is_fetched_again_after_its_ttl(chat_settings: Settings, http_mcp: HttpMcpServer) -> None:
    settings = with_mcp(chat_settings, {"remote": remote_config(http_mcp.url)}, mcp_tools_ttl_seconds=0.2)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:

        def quiet(n: int) -> int:
            return -n

        http_mcp.mcp.add_tool(quiet, name="quiet", description="Added without a list-changed notification.")
        http_mcp.mcp.remove_tool("fail")
        for _ in range(100):
            names = {t["function"]["name"] for t in (await info(client))["tools"]}
            if "remote__quiet" in names:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the TTL never refreshed the tool list")
        assert "remote__fail" not in names  # a tool the server dropped leaves the registry
        sid = await new_session(client)
        _, body = await send(client, sid, '[[mock:tool name=remote__quiet args={"n": 4}]]')
        assert outputs(body)[0]["output"] == {"result": -4}


async def test_a_long_output_is_cut_like_any_tools(chat_settings: Settings, db: asyncpg.Connection) -> None:
    settings = with_mcp(chat_settings, {"local": stdio_config()}, max_tool_output_tokens=100)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, '[[mock:tool name=local__big args={"size": 200000}]]')
        assert_well_formed(body)
        assert outputs(body)[0]["type"] == "tool-output-available"
        (stored,) = await db.fetch(
            "SELECT content FROM chat_messages WHERE session_id = $1 AND role = 'tool'", UUID(sid)
        )
        assert "omitted" in stored["content"] and len(stored["content"]) < 2000


async def test_stdio_servers_are_stopped_at_shutdown(chat_settings: Settings) -> None:
    settings = with_mcp(chat_settings, {"local": stdio_config()})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, "[[mock:tool name=local__pid args={}]]")
        child = outputs(body)[0]["output"]["result"]
        os.kill(child, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


async def test_a_server_that_never_answers_or_cannot_start_is_down_and_does_not_hold_the_service(
    chat_settings: Settings,
) -> None:
    servers = {
        "mute": {"command": sys.executable, "args": ["-c", "import time; time.sleep(60)"]},
        "missing": {"command": "/nonexistent/mcp-server"},
    }
    settings = with_mcp(chat_settings, servers, mcp_connect_timeout_seconds=0.5, mcp_startup_wait_seconds=2)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        await wait_for(client, "mute", "down")
        await wait_for(client, "missing", "down")
        assert (await server_state(client, "mute"))["error"] == "timed out"
        assert (await server_state(client, "missing"))["error"] == "FileNotFoundError"
        assert (await client.get("/health/ready")).status_code == 200
        sid = await new_session(client)
        _, body = await send(client, sid, "[[mock:text content=fine]]")
        assert chunks(body)[-1]["finishReason"] == "stop"


async def test_a_down_server_is_retried_and_stays_down_since_its_first_failure(chat_settings: Settings) -> None:
    attempts = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()  # a server that hangs up on every request

    listener = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    settings = with_mcp(
        chat_settings, {"broken": {"url": f"http://127.0.0.1:{port}/mcp"}}, mcp_reconnect_max_seconds=0.1
    )
    async with listener, LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        await wait_for(client, "broken", "down")
        first = await server_state(client, "broken")
        seen = attempts
        for _ in range(200):
            if attempts >= seen + 3:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no new attempts to reach the server ({attempts})")
        await wait_for(client, "broken", "down")
        assert (await server_state(client, "broken"))["since"] == first["since"]


async def test_a_servers_tools_marked_for_approval_wait_for_the_user_and_run_once_approved(
    chat_settings: Settings,
) -> None:
    settings = with_mcp(chat_settings, {"local": stdio_config(requires_approval=["add"])})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(
            client,
            sid,
            '[[mock:tool name=local__add args={"a": 2, "b": 3}]] [[mock:tool name=local__weird_name args={"x": 7}]]',
        )
        assert_well_formed(body)
        asked = [c for c in chunks(body) if c["type"] == "tool-approval-request"]
        [add_call] = [c["toolCallId"] for c in asked]
        ran = [c for c in chunks(body) if c["type"] == "tool-output-available"]
        assert [r["output"]["result"] for r in ran] == [7]  # the tool not on the list ran at once
        r = await client.post(
            f"/api/chat/sessions/{sid}/tool-calls/{add_call}/approval", json={"approved": True}, headers=ALICE
        )
        assert r.status_code == 200, r.text
        _, continued = await read_stream(client, "GET", f"/api/chat/tasks/{r.json()['task_id']}/stream", headers=ALICE)
        [output] = [c for c in chunks(continued) if c["type"] == "tool-output-available"]
        assert output["toolCallId"] == add_call and output["output"]["result"] == 5
