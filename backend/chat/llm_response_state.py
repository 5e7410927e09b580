"""Server-side conversation state for the Responses API (`COPILOT_RESPONSES_STATE=server`): each model call of a
session is stored by the provider (`store: true`), and the next one sends only the input items that came after it,
with `previous_response_id`.

What the provider holds under a response id is the input of that call and its reply. We remember how many input
items that is (as we would send them again: the call's input and its reply converted back from the stored history)
and a hash of them. A later call whose input starts with the same items sends only the rest; any other input (a
compaction rewrote the history, the system prompt changed with the day) is sent whole, and starts a new chain.
The model call must know whose conversation it serves: the turn runs in a context that names its session
(`conversation_context`); outside one (titles, summaries) calls are stateless.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson

from backend.chat.llm_events import Completed, ModelEvent, TextChunk
from backend.chat.llm_responses import input_items
from backend.errors import ModelError, StorageUnavailable
from backend.store.response_chains import ChainLink

log = logging.getLogger("copilot.llm")

EXPIRED = "previous_response_not_found"
"""The provider's code for a `previous_response_id` it no longer knows (expired, another region, deleted)."""

_conversation: contextvars.ContextVar[str | None] = contextvars.ContextVar("copilot_conversation", default=None)


def conversation_context(context: contextvars.Context, session_id: str) -> contextvars.Context:
    """`context`, in which model calls serve `session_id`'s conversation (for a turn task's `context=`)."""
    context.run(_conversation.set, session_id)
    return context


class ChainStore(Protocol):
    """Where each session's last response is kept (`store/response_chains.py`)."""

    def get(self, session_id: str) -> Awaitable[ChainLink | None]: ...

    def put(self, session_id: str, link: ChainLink) -> Awaitable[None]: ...


class Chained:
    """One model call's place in its session's chain."""

    __slots__ = ("body", "linked", "session_id")

    def __init__(self, session_id: str, body: dict[str, Any], *, linked: bool) -> None:
        self.session_id = session_id
        self.body = body
        self.linked = linked
        """Whether the body sends `previous_response_id` (and only the new items)."""


class ResponseChains:
    """Links each session's model calls through the provider's stored responses."""

    def __init__(self, store: ChainStore) -> None:
        self._store = store

    async def stream(
        self, body: dict[str, Any], stream_body: Callable[[dict[str, Any]], AsyncIterator[ModelEvent]]
    ) -> AsyncIterator[ModelEvent]:
        """Stream one call (`stream_body` sends a body) as part of its session's chain, then remember its response.
        A provider that no longer knows the previous response gets the whole input once more, before anything was
        streamed, so the client never notices."""
        full: list[dict[str, Any]] = body["input"]
        chained = await self._chain(body)
        if chained is None:
            async for event in stream_body(body):
                yield event
            return
        produced = False
        try:
            async for event in self._remembering(chained.session_id, full, stream_body(chained.body)):
                produced = True
                yield event
            return
        except ModelError as e:
            if produced or not chained.linked or e.provider_code != EXPIRED:
                raise
            log.info(
                "session %s: the provider no longer knows its last response; sending the whole input",
                chained.session_id,
            )
        whole = {k: v for k, v in chained.body.items() if k != "previous_response_id"}
        async for event in self._remembering(chained.session_id, full, stream_body({**whole, "input": full})):
            yield event

    async def _remembering(
        self, session_id: str, full: list[dict[str, Any]], events: AsyncIterator[ModelEvent]
    ) -> AsyncIterator[ModelEvent]:
        """`events`, and once they complete, the session's new last response remembered."""
        text: list[str] = []
        async for event in events:
            if isinstance(event, TextChunk):
                text.append(event.text)
            elif isinstance(event, Completed):
                await self._remember(session_id, full, event, "".join(text))
            yield event

    async def _chain(self, body: dict[str, Any]) -> Chained | None:
        """The call's place in its session's chain (None outside a session's turn): only the new items and
        `previous_response_id` when the session's last response holds the rest of its input."""
        session_id = _conversation.get()
        if session_id is None:
            return None
        full: list[dict[str, Any]] = body["input"]
        stored = {**body, "store": True}
        try:
            link = await self._store.get(session_id)
        except StorageUnavailable:
            log.warning("session %s: its last response is unknown (database unavailable)", session_id)
            return Chained(session_id, stored, linked=False)
        if link is None or link.covered >= len(full) or _digest(full[: link.covered]) != link.digest:
            return Chained(session_id, stored, linked=False)
        linked = {**stored, "input": full[link.covered :], "previous_response_id": link.response_id}
        return Chained(session_id, linked, linked=True)

    async def _remember(self, session_id: str, full: list[dict[str, Any]], done: Completed, text: str) -> None:
        """After a call that completed, the provider holds its input and its reply."""
        if done.response_id is None:
            return
        reply: dict[str, Any] = {"role": "assistant", "content": text or None}
        if done.tool_calls:
            reply["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json or "{}"}}
                for c in done.tool_calls
            ]
        held = full + input_items([reply])
        try:
            await self._store.put(session_id, ChainLink(done.response_id, len(held), _digest(held)))
        except StorageUnavailable:
            log.warning("session %s: could not remember its last response (database unavailable)", session_id)


def _digest(items: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(orjson.dumps(list(items), option=orjson.OPT_SORT_KEYS)).hexdigest()
