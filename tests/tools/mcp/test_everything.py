"""The official `server-everything` (npm) over stdio, driven through full turns with the mock model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from backend.config import Settings
from tests.api.test_chat_stream import assert_well_formed, new_session, send
from tests.conftest import LiveServer
from tests.sse import chunks
from tests.tools.mcp.everything import everything_config
from tests.tools.mcp.test_turns import info, outputs, with_mcp

pytestmark = pytest.mark.slow


async def test_server_everything_tools_run_in_turns(chat_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPILOT_CANARY_SECRET", "must-not-reach-mcp-servers")
    config = everything_config(env={"GREETING": "hello from the config"}, timeout_seconds=1)
    async with (
        LiveServer(with_mcp(chat_settings, {"everything": config})) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as client,
    ):
        described = await info(client)
        (server,) = described["mcp_servers"]
        assert (server["name"], server["transport"], server["state"]) == ("everything", "stdio", "ready")
        schemas = {t["function"]["name"]: t["function"] for t in described["tools"]}
        assert schemas["everything__get-sum"]["parameters"]["properties"].keys() == {"a", "b"}
        assert server["tools"] == sum(name.startswith("everything__") for name in schemas)

        sid = await new_session(client)
        calls: list[tuple[str, dict[str, Any]]] = [
            ("echo", {"message": "ping"}),
            ("get-sum", {"a": 2, "b": 40}),
            ("get-tiny-image", {}),
            ("get-env", {}),
            ("get-sum", {"a": "two"}),
            ("trigger-long-running-operation", {"duration": 30, "steps": 3}),
        ]
        message = " ".join(f"[[mock:tool name=everything__{n} args={json.dumps(a)}]]" for n, a in calls)
        _, body = await send(client, sid, message)
        assert_well_formed(body)
        echo, total, image, env, bad, slow = outputs(body)
        assert echo["output"] == "Echo: ping"
        assert "42" in total["output"]
        described_image = next(part for part in image["output"] if isinstance(part, dict))
        assert described_image["type"] == "image" and described_image["mimeType"] == "image/png"
        assert described_image["omitted"].endswith("base64 characters")  # described, not inlined
        assert "hello from the config" in env["output"] and "must-not-reach-mcp-servers" not in env["output"]
        assert bad["type"] == "tool-output-error" and "a" in bad["errorText"]
        assert slow["type"] == "tool-output-error" and "timed out after 1 second" in slow["errorText"]
        assert chunks(body)[-1]["finishReason"] == "stop"
