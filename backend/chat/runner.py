"""Starting turns and driving them in the background, detached from the HTTP request that asked for them.

`submit` stores the user message (idempotently), claims the session's active-turn pointer and starts the turn as
a task this pod owns; the request that asked only subscribes to the turn's stream, so a client that disconnects
does not stop the turn. `_drive` feeds the engine's events through the UI translator into the turn's Redis
Stream and writes the end exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backend.chat import events as ev
from backend.chat.prompt import SystemPrompt
from backend.chat.title import TitleWriter
from backend.chat.tokens import TokenCounter
from backend.chat.turn import TurnEngine, TurnRequest
from backend.chat.ui_stream import UIStreamTranslator
from backend.errors import Conflict
from backend.store.models import ChatSession, NewMessage
from backend.store.sessions import SessionStore
from backend.streams.active import ActiveTurns
from backend.streams.publisher import TurnPublisher
from backend.streams.turns import TurnRegistry, TurnStatus

log = logging.getLogger("copilot.runner")

_TURN_NAMESPACE = uuid.UUID("6f6c1b2e-8d43-4c55-9b0e-2f1f6a7c9d10")


@dataclass(frozen=True, slots=True)
class UserMessage:
    text: str
    client_message_id: str | None = None
    page_context: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Submitted:
    turn_id: str
    user_sequence: int | None
    """Sequence of the stored user message (None when the request repeated one whose turn is known)."""
    repeated: bool


class TurnRunner:
    def __init__(
        self,
        *,
        engine: TurnEngine,
        store: SessionStore,
        registry: TurnRegistry,
        active: ActiveTurns,
        titles: TitleWriter,
        prompt: Callable[[], SystemPrompt],
        counter: TokenCounter,
        turn_max_seconds: float,
        publish_window_seconds: float,
    ) -> None:
        self._engine = engine
        self._store = store
        self._registry = registry
        self._active = active
        self._titles = titles
        self._prompt = prompt
        self._counter = counter
        self._turn_max_seconds = turn_max_seconds
        self._window = publish_window_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(
        self, session: ChatSession, user_id: str, message: UserMessage, *, is_authenticated: bool
    ) -> Submitted:
        turn_id = _turn_id(session.id, message.client_message_id)
        if await self._registry.info(turn_id) is not None:
            return Submitted(turn_id, None, repeated=True)  # a resend: the turn exists, follow it
        if not await self._active.claim(session.id, turn_id):
            current = await self._active.current(session.id)
            if current == turn_id:
                return Submitted(turn_id, None, repeated=True)
            raise Conflict("a reply is still being generated in this session", active_task_id=current)
        try:
            stored = await self._store.append(
                session.id,
                [
                    NewMessage(
                        "user",
                        message.text,
                        client_message_id=message.client_message_id,
                        token_count=self._counter.count_message({"role": "user", "content": message.text}),
                    )
                ],
            )
            user = stored.messages[0]
            # A message stored before whose turn is unknown (expired, or its pod died before starting it) is
            # answered now only if nothing answered it yet.
            if stored.duplicates and user.sequence != (await self._store.get(session.id, user_id)).message_count:
                raise Conflict("this message was already answered", message_id=str(user.id))
            await self._registry.create(turn_id, str(session.id), user_id)
        except BaseException:
            await self._active.release(session.id, turn_id)
            raise
        request = TurnRequest(
            turn_id=turn_id,
            session_id=session.id,
            user_id=user_id,
            is_authenticated=is_authenticated,
            page_context=message.page_context,
        )
        task = asyncio.create_task(self._drive(request), name=f"turn-{turn_id}")
        self._tasks[turn_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(turn_id, None))
        if session.title is None and user.sequence == 1:
            self._titles.schedule(session.id, user_id, message.text)
        return Submitted(turn_id, user.sequence, repeated=False)

    async def wait(self, turn_id: str) -> None:
        """Until the turn ends, if it runs on this pod. A waiter that goes away does not cancel the turn."""
        task = self._tasks.get(turn_id)
        if task is not None:
            await asyncio.shield(task)

    async def shutdown(self) -> None:
        """Stop every turn of this pod; each stores its partial reply and ends its stream as interrupted."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel("shutdown")
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(self, req: TurnRequest) -> None:
        publisher = TurnPublisher(self._registry, req.turn_id, window_seconds=self._window)
        translator = UIStreamTranslator()
        status: TurnStatus = "completed"

        def emit(event: ev.TurnEvent) -> None:
            for chunk in translator.translate(event):
                publisher.emit(chunk)

        try:
            async with asyncio.timeout(self._turn_max_seconds):
                async for event in self._engine.run(req, self._prompt()):
                    if isinstance(event, ev.TurnFailed):
                        status = "failed"
                    emit(event)
        except TimeoutError:
            status = "failed"
            emit(ev.TurnFailed(f"The reply took longer than {self._turn_max_seconds:g}s and was stopped.", "timeout"))
        except asyncio.CancelledError as e:
            status = "interrupted" if "shutdown" in e.args else "cancelled"
            emit(ev.TurnFailed("The reply was interrupted." if status == "interrupted" else "Stopped.", status))
        except Exception:
            log.exception("turn %s failed", req.turn_id)
            status = "failed"
            emit(ev.TurnFailed("Something went wrong while generating the reply.", "internal_error"))
        finally:
            for chunk in translator.close("stop" if status == "completed" else "error"):
                publisher.emit(chunk)
            await asyncio.shield(self._finish(req, publisher, status))

    async def _finish(self, req: TurnRequest, publisher: TurnPublisher, status: TurnStatus) -> None:
        try:
            await publisher.close(status)
        finally:
            await self._active.release(req.session_id, req.turn_id)


def _turn_id(session_id: uuid.UUID, client_message_id: str | None) -> str:
    """Same session and client message id, same turn: a resend finds the turn instead of starting another."""
    if client_message_id is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_TURN_NAMESPACE, f"{session_id}:{client_message_id}"))
