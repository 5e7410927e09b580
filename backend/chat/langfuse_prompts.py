"""The system prompt from Langfuse prompt management: fetched at startup, kept in memory, refreshed in the background.

`current()` never does I/O, so a turn never waits on Langfuse. It returns the last prompt fetched, or the default
prompt shipped in the package when none was ever fetched (Langfuse unconfigured, or unreachable since startup). A
background task refetches every `ttl_seconds`, so a version an admin publishes (or a label they move) is in use
within one TTL without a restart. When a refetch fails the prompt in hand keeps serving (stale-while-error) and
the next attempt comes sooner (`min(ttl, 10 s)`).

This module keeps its own cache and fetches through the SDK's API client (`langfuse.api.prompts.get`) rather than
`get_prompt`: the SDK's cache would refresh on a thread of its own, triggered by reads, and hide from us when the
prompt was last fetched; and its HTTP layer retries a 5xx twice with back-off sleeps unless the request says
`max_retries: 0`, which `get_prompt` cannot pass. The refresh loop is the only retry.

Text prompts are used as they are. Chat prompts (a list of messages) become one system prompt: the `system`
messages' contents joined with a blank line. Other messages and placeholders are ignored (and logged), since the
conversation itself comes from storage. A chat prompt without any system message is rejected like a failed fetch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote

from langfuse.model import ChatPromptClient, TextPromptClient

from backend.chat.system_prompt import SystemPrompt

log = logging.getLogger("copilot.prompts")

FETCH_TIMEOUT_SECONDS = 5
"""One fetch (startup prefetch included) gives up after this long; Langfuse being down never holds startup."""
_RETRY_SECONDS = 10.0

PromptOrigin = Literal["langfuse", "fallback"]


class PromptsApi(Protocol):
    """What this module needs of `langfuse.Langfuse().api.prompts`."""

    def get(self, prompt_name: str, *, label: str | None = None, request_options: Any = None) -> Any: ...


class LangfuseApi(Protocol):
    @property
    def prompts(self) -> PromptsApi: ...


class PromptClient(Protocol):
    """What this module needs of `langfuse.Langfuse`."""

    @property
    def api(self) -> LangfuseApi: ...


@dataclass(frozen=True, slots=True)
class PromptStatus:
    """What the admin endpoint reports about the prompt in use."""

    name: str
    version: str
    label: str | None
    source: PromptOrigin
    fetched_at: datetime | None
    """When the prompt in use was fetched (None for the default prompt)."""
    last_error: str | None
    """Why the last fetch failed, if it did (the prompt in use is then stale or the default)."""


class InvalidPrompt(ValueError):
    """A prompt Langfuse returned that cannot be a system prompt."""


class PromptSource:
    def __init__(
        self,
        client: PromptClient | None,
        *,
        name: str,
        label: str | None,
        ttl_seconds: float,
        fallback: SystemPrompt,
        fetch_timeout_seconds: int = FETCH_TIMEOUT_SECONDS,
    ) -> None:
        """`client` None means Langfuse is not configured: the fallback is used and nothing is fetched."""
        self._client = client
        self._name = name
        self._label = label
        self._ttl = ttl_seconds
        self._fallback = fallback
        self._timeout = fetch_timeout_seconds
        self._prompt = fallback
        self._source: PromptOrigin = "fallback"
        self._fetched_at: datetime | None = None
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def current(self) -> SystemPrompt:
        """The prompt to use now: no I/O, safe to call on every turn."""
        return self._prompt

    def status(self) -> PromptStatus:
        if self._client is None:
            return PromptStatus(self._prompt.name, self._prompt.version, None, "fallback", None, None)
        return PromptStatus(
            name=self._prompt.name,
            version=self._prompt.version,
            label=self._label,
            source=self._source,
            fetched_at=self._fetched_at,
            last_error=self._last_error,
        )

    async def start(self) -> None:
        """Fetch the prompt once (bounded by the fetch timeout), then keep refreshing it in the background."""
        if self._client is None:
            log.info("Langfuse is not configured: using the built-in system prompt")
            return
        ok = await self.refresh()
        if not ok:
            log.warning("prompt %r not available at startup: using the built-in prompt until it is", self._name)
        self._task = asyncio.create_task(self._refresh_forever(ok), name="prompt-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def refresh(self) -> bool:
        """Fetch the prompt now; on success it is used from the next turn on. False if the fetch failed."""
        if self._client is None:
            return False
        try:
            # The SDK call is blocking; a thread keeps the event loop (and every stream) free meanwhile.
            async with asyncio.timeout(self._timeout + 1):
                fetched = await asyncio.to_thread(self._fetch, self._client)
        except Exception as e:
            self._last_error = f"{type(e).__name__}: {e}"
            log.warning(
                "prompt %r could not be fetched (%s); still using %s@%s",
                self._name,
                self._last_error,
                self._prompt.name,
                self._prompt.version,
            )
            return False
        if (fetched.name, fetched.version) != (self._prompt.name, self._prompt.version):
            log.info("system prompt is now %s@%s (label %s)", fetched.name, fetched.version, self._label)
        self._prompt, self._source = fetched, "langfuse"
        self._fetched_at, self._last_error = datetime.now(UTC), None
        return True

    async def _refresh_forever(self, last_ok: bool) -> None:
        while True:
            await asyncio.sleep(self._ttl if last_ok else min(self._ttl, _RETRY_SECONDS))
            last_ok = await self.refresh()

    def _fetch(self, client: PromptClient) -> SystemPrompt:
        response = client.api.prompts.get(
            quote(self._name, safe=""),  # folder names ("team/prompt") travel as one path segment
            label=self._label,
            request_options={"timeout_in_seconds": self._timeout, "max_retries": 0},
        )
        prompt = ChatPromptClient(response) if response.type == "chat" else TextPromptClient(response)
        in_use = self._prompt
        if self._source == "langfuse" and (prompt.name, str(prompt.version)) == (in_use.name, in_use.version):
            return in_use  # unchanged: versions are immutable in Langfuse
        return to_system_prompt(prompt.name, prompt.version, prompt.prompt)


def to_system_prompt(name: str, version: int | str, body: str | Sequence[Any]) -> SystemPrompt:
    """A Langfuse prompt (text, or chat messages) as a system prompt template."""
    if isinstance(body, str):
        text = body
    else:
        system, ignored = [], 0
        for message in body:
            if isinstance(message, dict) and message.get("role") == "system" and message.get("type") != "placeholder":
                system.append(str(message.get("content") or ""))
            else:
                ignored += 1
        if not system:
            raise InvalidPrompt(f"chat prompt {name!r} v{version} has no system message")
        if ignored:
            log.warning("chat prompt %r v%s: %d non-system messages ignored", name, version, ignored)
        text = "\n\n".join(system)
    if not text.strip():
        raise InvalidPrompt(f"prompt {name!r} v{version} is empty")
    return SystemPrompt(text=text.strip(), name=name, version=str(version))
