"""The prompt source with the real `langfuse` SDK against a loopback Langfuse: fetch, refresh, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from langfuse import Langfuse

from backend.chat.langfuse_prompts import PromptSource
from backend.chat.system_prompt import default_prompt, turn_variables
from tests.observability.fakes import FakeLangfuse

NAME = "copilot/system"


@pytest.fixture
def langfuse() -> Iterator[FakeLangfuse]:
    with FakeLangfuse() as fake:
        yield fake


def client_for(fake: FakeLangfuse) -> Langfuse:
    return Langfuse(
        public_key=fake.public_key, secret_key=fake.secret_key, base_url=fake.url, tracing_enabled=False, timeout=2
    )


def source_for(fake: FakeLangfuse, *, ttl: float = 60, label: str | None = "production", **kw: Any) -> PromptSource:
    return PromptSource(client_for(fake), name=NAME, label=label, ttl_seconds=ttl, fallback=default_prompt(), **kw)


@pytest.fixture
async def started() -> AsyncIterator[list[PromptSource]]:
    """Sources a test starts; closed (refresh task stopped) afterwards."""
    sources: list[PromptSource] = []
    yield sources
    for s in sources:
        await s.close()


async def start(sources: list[PromptSource], source: PromptSource) -> PromptSource:
    sources.append(source)
    await source.start()
    return source


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until `condition()` holds (polled every 20 ms); fails after `within` seconds."""
    began = time.monotonic()
    for _ in range(int(within / 0.02)):
        if condition():
            return time.monotonic() - began
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true after {within}s")


async def wait_for_version(source: PromptSource, version: str) -> float:
    """Seconds until `source.current()` serves `version`."""
    return await eventually(lambda: source.current().version == version)


async def test_text_prompt_is_fetched_at_start_and_compiled_per_turn(
    langfuse: FakeLangfuse, started: list[PromptSource]
) -> None:
    langfuse.publish(NAME, "You help {{ user_id }} on {{page_url}}. Unknown {{nope}} stays.")
    source = await start(started, source_for(langfuse))

    prompt = source.current()
    assert (prompt.name, prompt.version) == (NAME, "1")
    variables = turn_variables(user_id="alice", is_authenticated=True, page_context={"url": "https://x.test/a"})
    assert prompt.render(variables).text == "You help alice on https://x.test/a. Unknown {{nope}} stays."

    (fetch,) = langfuse.prompt_fetches()
    assert fetch.path == "/api/public/v2/prompts/copilot%2Fsystem"
    assert fetch.query == {"label": ["production"]}
    status = source.status()
    assert (status.source, status.label, status.version, status.last_error) == ("langfuse", "production", "1", None)
    assert status.fetched_at is not None


async def test_chat_prompt_joins_its_system_messages(langfuse: FakeLangfuse, started: list[PromptSource]) -> None:
    langfuse.publish(
        NAME,
        [
            {"role": "system", "content": "You are the {{product}} copilot.", "type": "chatmessage"},
            {"type": "placeholder", "name": "history"},
            {"role": "system", "content": "Be brief.", "type": "chatmessage"},
            {"role": "user", "content": "example question", "type": "chatmessage"},
        ],
    )
    source = await start(started, source_for(langfuse))
    assert source.current().text == "You are the {{product}} copilot.\n\nBe brief."
    assert source.current().render({"product": "Acme"}).text == "You are the Acme copilot.\n\nBe brief."


async def test_label_latest_serves_the_newest_version(langfuse: FakeLangfuse, started: list[PromptSource]) -> None:
    langfuse.publish(NAME, "production one")
    langfuse.publish(NAME, "draft two", labels=("staging",))
    prod = await start(started, source_for(langfuse, label="production"))
    latest = await start(started, source_for(langfuse, label="latest"))
    assert (prod.current().text, prod.current().version) == ("production one", "1")
    assert (latest.current().text, latest.current().version) == ("draft two", "2")


async def test_a_published_version_is_used_within_the_ttl_without_a_fetch_per_turn(
    langfuse: FakeLangfuse, started: list[PromptSource]
) -> None:
    langfuse.publish(NAME, "first")
    ttl = 0.3
    source = await start(started, source_for(langfuse, ttl=ttl))
    began = time.monotonic()

    turns = 0
    for _ in range(50):  # 50 "turns" over ~0.5 s: each reads the prompt, none fetches
        assert source.current().text == "first"
        turns += 1
        await asyncio.sleep(0.01)
    assert len(langfuse.prompt_fetches()) <= 1 + (time.monotonic() - began) / ttl + 1

    langfuse.publish(NAME, "second")
    waited = await wait_for_version(source, "2")
    assert waited <= ttl + 0.5
    assert source.current().text == "second"
    fetches = len(langfuse.prompt_fetches())
    assert fetches <= 2 + (time.monotonic() - began) / ttl, f"{fetches} fetches for {turns} turns"


async def test_langfuse_down_at_start_uses_the_builtin_prompt_then_recovers(
    langfuse: FakeLangfuse, started: list[PromptSource]
) -> None:
    langfuse.publish(NAME, "managed")
    langfuse.down = True
    source = await start(started, source_for(langfuse, ttl=0.2))

    assert source.current() == default_prompt()
    status = source.status()
    assert status.source == "fallback" and status.fetched_at is None
    assert status.last_error is not None and "503" in status.last_error

    langfuse.down = False
    await wait_for_version(source, "1")
    assert source.current().text == "managed"
    assert source.status().source == "langfuse" and source.status().last_error is None


async def test_langfuse_down_later_keeps_serving_the_prompt_in_hand(
    langfuse: FakeLangfuse, started: list[PromptSource]
) -> None:
    langfuse.publish(NAME, "managed v1")
    source = await start(started, source_for(langfuse, ttl=0.1))
    langfuse.down = True
    langfuse.publish(NAME, "v2 that cannot be fetched")
    before = len(langfuse.prompt_fetches())
    await eventually(lambda: len(langfuse.prompt_fetches()) >= before + 3, within=15)  # failed refreshes

    assert (source.current().text, source.current().version) == ("managed v1", "1")
    status = source.status()
    assert status.source == "langfuse" and status.last_error is not None

    langfuse.down = False
    await wait_for_version(source, "2")


async def test_a_refresh_during_an_outage_is_one_request_that_fails_at_once(
    langfuse: FakeLangfuse, started: list[PromptSource]
) -> None:
    # The SDK's HTTP layer retries a 5xx twice with back-off sleeps on its own; that made each refresh take
    # seconds and hid the failure from `status()` meanwhile. The refresh loop is the only retry.
    langfuse.publish(NAME, "managed v1")
    source = await start(started, source_for(langfuse, ttl=60))
    langfuse.down = True
    before = len(langfuse.prompt_fetches())
    assert await source.refresh() is False
    assert len(langfuse.prompt_fetches()) == before + 1
    status = source.status()
    assert status.last_error is not None and "503" in status.last_error
    assert source.current().text == "managed v1"


async def test_a_slow_langfuse_does_not_hold_startup(langfuse: FakeLangfuse, started: list[PromptSource]) -> None:
    langfuse.publish(NAME, "slow")
    langfuse.delay_seconds = 5
    began = time.monotonic()
    source = await start(started, source_for(langfuse, fetch_timeout_seconds=1))
    assert time.monotonic() - began < 3
    assert source.current() == default_prompt()
    langfuse.delay_seconds = 0


async def test_a_chat_prompt_without_system_message_is_refused(
    langfuse: FakeLangfuse, started: list[PromptSource]
) -> None:
    langfuse.publish(NAME, "good")
    source = await start(started, source_for(langfuse, ttl=0.1))
    langfuse.publish(NAME, [{"role": "user", "content": "hi", "type": "chatmessage"}])
    before = len(langfuse.prompt_fetches())
    await eventually(lambda: len(langfuse.prompt_fetches()) >= before + 2, within=15)
    assert source.current().text == "good"
    assert "no system message" in (source.status().last_error or "")


async def test_unconfigured_langfuse_means_the_builtin_prompt() -> None:
    source = PromptSource(None, name=NAME, label=None, ttl_seconds=60, fallback=default_prompt())
    await source.start()
    assert source.current() == default_prompt()
    status = source.status()
    assert (status.source, status.label, status.version) == ("fallback", None, "builtin")
    await source.close()
