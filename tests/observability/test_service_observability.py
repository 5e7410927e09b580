"""The service end to end with Langfuse and PostHog configured (loopback fakes, real SDKs, real HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from backend.chat.system_prompt import default_prompt
from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.api.test_chat_stream import ALICE, new_session, send, turn_calls, wait_idle
from tests.conftest import LiveServer, auth
from tests.helpers import free_port
from tests.observability.fakes import FakeLangfuse, FakePostHog
from tests.sse import text_of

PROMPT = "copilot-system"
ADMIN = auth("root", roles=["admin"])


@pytest.fixture
def langfuse() -> Iterator[FakeLangfuse]:
    with FakeLangfuse() as fake:
        yield fake


@pytest.fixture
def posthog() -> Iterator[FakePostHog]:
    with FakePostHog() as fake:
        yield fake


def observed(settings: Settings, langfuse_url: str, posthog_url: str, public_key: str, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "langfuse_public_key": public_key,
            "langfuse_secret_key": SecretStr("sk-lf-test"),
            "langfuse_host": langfuse_url,
            "prompt_cache_ttl_seconds": 1,
            "posthog_api_key": "phc_test",
            "posthog_host": posthog_url,
            **extra,
        }
    )


def system_message(mock: MockLLMServer) -> Any:
    return turn_calls(mock)[-1]["messages"][0]


async def prompt_config(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/api/chat/config/prompt", headers=ADMIN)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


async def test_turns_use_the_managed_prompt_and_report_to_langfuse_and_posthog(
    chat_settings: Settings, langfuse: FakeLangfuse, posthog: FakePostHog, mock_llm: MockLLMServer
) -> None:
    langfuse.publish(PROMPT, "You are Acme's copilot. The user {{user_id}} is on {{ page_url }}.")
    settings = observed(chat_settings, langfuse.url, posthog.url, langfuse.public_key)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        began = time.monotonic()
        sid = await new_session(client)
        _, body = await send(
            client,
            sid,
            '[[mock:tool name=calculate args={"expression": "6*7"}]]',
            context={"url": "https://app.test/billing", "content": "Invoices"},
        )
        assert "42" in text_of(body)
        await wait_idle(client, sid)
        assert system_message(mock_llm) == {
            "role": "system",
            "content": "You are Acme's copilot. The user alice is on https://app.test/billing.",
        }

        config = await prompt_config(client)
        assert {k: config[k] for k in ("name", "version", "label", "source")} == {
            "name": PROMPT,
            "version": "1",
            "label": "latest",  # not production: the default outside production
            "source": "langfuse",
        }
        assert config["fetched_at"] is not None and config["last_error"] is None
        forbidden = await client.get("/api/chat/config/prompt", headers=ALICE)
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "forbidden"

        # An admin publishes a new version: in use within the TTL, no restart.
        langfuse.publish(PROMPT, "Version two for {{user_id}}.")
        published = time.monotonic()
        while (await prompt_config(client))["version"] != "2":
            assert time.monotonic() - published < 3, "the new version was not picked up within the TTL"
            await asyncio.sleep(0.05)
        for i in range(5):
            await send(client, sid, f'[[mock:text content="reply {i}"]]')
            await wait_idle(client, sid)
            assert system_message(mock_llm) == {"role": "system", "content": "Version two for alice."}
        # Six turns, yet only the background refreshes fetched (about one per TTL).
        assert len(langfuse.prompt_fetches()) <= 2 + (time.monotonic() - began) / settings.prompt_cache_ttl_seconds

    # Shutdown flushed both SDKs.
    events = posthog.events()
    names = [e["event"] for e in events]
    assert names.count("chat_message_sent") == 6
    assert names.count("chat_turn_completed") == 6
    assert names.count("chat_tool_called") == 1
    assert all(e["distinct_id"] == "alice" and e["properties"]["session_id"] == sid for e in events)
    first_done = next(e for e in events if e["event"] == "chat_turn_completed")["properties"]
    assert first_done["tool_count"] == 1 and first_done["model_calls"] == 2 and first_done["outcome"] == "completed"
    assert first_done["total_tokens"] > 0 and first_done["time_to_first_token_ms"] is not None
    assert "Invoices" not in str(events) and "6*7" not in str(events)

    spans = langfuse.spans()
    roots = [s for s in spans if s.parent_span_id is None]
    assert len(roots) == 6
    assert all(s.attributes["session.id"] == sid and s.attributes["user.id"] == "alice" for s in spans)
    versions = sorted(s.attributes.get("langfuse.observation.prompt.version") for s in spans if s.type == "generation")
    assert versions == [1, 1, 2, 2, 2, 2, 2]
    assert [s.name for s in spans if s.type == "tool"] == ["calculate"]


async def test_vendors_unreachable_the_service_still_answers(chat_settings: Settings, mock_llm: MockLLMServer) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = observed(chat_settings, nowhere, nowhere, "pk-lf-unreachable")
    began = time.monotonic()
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        assert time.monotonic() - began < 10  # startup does not wait out Langfuse
        sid = await new_session(client)
        turn_began = time.monotonic()
        _, body = await send(client, sid, '[[mock:text content="still here"]]')
        assert text_of(body) == "still here"
        assert time.monotonic() - turn_began < 2
        assert system_message(mock_llm)["content"] == default_prompt().text
        config = await prompt_config(client)
        assert (config["source"], config["version"], config["name"]) == ("fallback", "builtin", "default")
        assert config["last_error"]
    assert time.monotonic() - began < 40  # shutdown's flushes are bounded


async def test_unconfigured_vendors(chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer) -> None:
    client, _ = chat
    sid = await new_session(client)
    await send(client, sid, '[[mock:text content="plain"]]')
    assert system_message(mock_llm)["content"] == default_prompt().text
    config = await prompt_config(client)
    assert (config["source"], config["label"], config["fetched_at"]) == ("fallback", None, None)
