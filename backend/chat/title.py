"""Short session titles, written in the background after the first user message.

Title tasks are kept referenced until they finish (an unreferenced task can be garbage-collected mid-flight);
a failure is only logged, the session simply keeps no title.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from backend.chat.llm import LLMClient
from backend.store.sessions import SessionStore

log = logging.getLogger("copilot.title")

_INSTRUCTION = (
    "Write a title of at most six words for a conversation that starts with the user message below. "
    "Answer with the title only, no quotes, no punctuation at the end."
)
_MAX_CHARS = 80


class TitleWriter:
    def __init__(self, llm: LLMClient, store: SessionStore, *, model: str | None) -> None:
        self._llm = llm
        self._store = store
        self._model = model
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, session_id: UUID, user_id: str, first_message: str) -> None:
        task = asyncio.create_task(self._write(session_id, user_id, first_message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, session_id: UUID, user_id: str, first_message: str) -> None:
        try:
            raw = await self._llm.complete(
                [{"role": "system", "content": _INSTRUCTION}, {"role": "user", "content": first_message[:2000]}],
                model=self._model,
                max_tokens=24,
            )
            title = " ".join(raw.split()).strip("\"'. ")[:_MAX_CHARS]
            if title:
                await self._store.rename(session_id, user_id, title)
        except Exception:
            log.warning("could not write a title for session %s", session_id, exc_info=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
