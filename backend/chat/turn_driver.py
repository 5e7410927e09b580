"""Running admitted turns in the background and following them, detached from the HTTP requests that asked.

`start` runs a turn as a task of this pod; `_drive` feeds the engine's events (`stream_chat_completion`) through the
UI translator into the turn's publisher, turns every way a turn can end (done, failed, timed out, stopped, shut down)
into its last chunks, and writes the end exactly once. `follow` gives a request the turn's chunks: from the
publisher's memory on this pod, from the turn's Redis Stream on any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from redis.exceptions import RedisError

from backend.chat import events as ev
from backend.chat import protocol as p
from backend.chat.chunk_writer import ChunkWriter
from backend.chat.llm_ahead import CallAhead
from backend.chat.llm_response_state import conversation_context
from backend.chat.local_turns import CANCEL, SHUTDOWN, LocalTurns, stop
from backend.chat.open_parts import OpenParts
from backend.chat.publisher import TurnPublisher
from backend.chat.quota import TurnQuota, billed_context
from backend.chat.recovery import explain_lost_tail
from backend.chat.session_admission import SessionAdmission
from backend.chat.system_prompt import SystemPrompt, turn_variables
from backend.chat.turn import send_first_call_ahead, stream_chat_completion
from backend.chat.turn_state import TurnRequest, TurnServices
from backend.chat.turn_supervisor import TurnSupervisor
from backend.chat.ui_stream import UIStreamTranslator
from backend.errors import StorageUnavailable
from backend.observability.telemetry import Telemetry, TurnFacts, start_turn
from backend.streams.turns import TurnRegistry, TurnStatus, TurnVanished, position_of

log = logging.getLogger("copilot.runner")

_STREAM_VANISHED = (
    "The live stream of this reply was lost (the server's stream store was reset). The reply is still stored when "
    "it ends: reload the conversation to see it."
)
_STREAM_UNREADABLE = (
    "The live stream of this reply could not be read any more. The reply is still stored when it ends: reload the "
    "conversation to see it."
)


class TurnDriver:
    def __init__(
        self,
        local: LocalTurns,
        supervisor: TurnSupervisor,
        *,
        services: TurnServices,
        registry: TurnRegistry,
        active: SessionAdmission,
        quota: TurnQuota,
        prompt: Callable[[], SystemPrompt],
        telemetry: Telemetry,
        turn_max_seconds: float,
        publish_window_seconds: float,
        approval_chunks: bool = True,
    ) -> None:
        self._local = local
        self._supervisor = supervisor
        self._services = services
        self._registry = registry
        self._active = active
        self._quota = quota
        self._prompt = prompt
        self._telemetry = telemetry
        self._turn_max_seconds = turn_max_seconds
        self._writer = ChunkWriter(registry, window_seconds=publish_window_seconds)
        self._approval_chunks = approval_chunks
        """Approval requests as `tool-approval-request` (ai 6 and 7), else as a data part (ai 5)."""

    def start(self, req: TurnRequest, message_text: str) -> None:
        """Run the turn as a task of this pod (its session claimed, its stream created, its slot taken); its
        publisher exists before anyone follows it."""
        turn_id, local = req.turn_id, self._local
        publisher = TurnPublisher(self._writer, turn_id, on_cancel_requested=lambda: stop(task))
        local.publishers[turn_id] = publisher
        local.anchored[turn_id] = req.session_id
        task = asyncio.create_task(
            self._drive(req, message_text, publisher),
            name=f"turn-{turn_id}",
            context=conversation_context(billed_context(req.user_id), str(req.session_id)),
        )
        local.tasks[turn_id] = task

        def done(_: asyncio.Task[None]) -> None:
            local.tasks.pop(turn_id, None)
            local.anchored.pop(turn_id, None)
            if local.publishers.get(turn_id) is publisher:
                del local.publishers[turn_id]
            publisher.abandon()

        task.add_done_callback(done)

    def runs(self, turn_id: str) -> bool:
        """Whether the turn runs on this pod."""
        return turn_id in self._local.tasks

    async def wait(self, turn_id: str) -> None:
        """Until the turn ends, if it runs on this pod. A waiter that goes away does not cancel the turn."""
        task = self._local.tasks.get(turn_id)
        if task is not None:
            await asyncio.shield(task)

    async def follow(
        self, turn_id: str, *, after: str = "0", heartbeat_seconds: float
    ) -> AsyncIterator[tuple[str, bytes | None]]:
        """The turn's entries from cursor `after`, live until its end. A turn this pod runs is followed in memory;
        any other from its Redis Stream, and a follower that finds the owner dead closes the turn itself.

        A cursor that is not one of this turn's (one of the session's previous turn, sent by a client that resumes
        "the session's running reply") counts as none: the turn is replayed from its start. A follower that loses
        the turn's stream (its keys vanished in a Redis flush or restart, or Redis stopped answering) ends the
        message itself: open parts closed, `error` and `finish` unless it saw the `finish` already. Those chunks
        have no cursor (`""`): they are not in the stream."""
        if position_of(turn_id, after) is None:
            after = "0"
        seen = OpenParts()
        publisher = self._local.publishers.get(turn_id)
        if publisher is not None and publisher.serves(after):
            async for entry in publisher.follow(after=after, heartbeat_seconds=heartbeat_seconds):
                if entry[1] is not None:
                    after = entry[0]
                    seen.feed_json(entry[1])
                yield entry
            if not publisher.taken_over or seen.finished:
                return
            # Another pod ended the turn (this pod's lease had lapsed): its closing entries are in Redis only.
        async for entry in self._follow_stream(turn_id, after=after, heartbeat_seconds=heartbeat_seconds, seen=seen):
            yield entry

    async def drain(self, grace_seconds: float) -> None:
        """Give the running turns `grace_seconds` to end on their own, then stop the rest as `shutdown` does.
        Followers keep working meanwhile."""
        running = list(self._local.tasks.values())
        if running:
            log.info("draining: %d running turn(s) get %gs to finish", len(running), grace_seconds)
            await asyncio.wait(running, timeout=grace_seconds)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every turn of this pod; each stores its partial reply and ends its stream as interrupted."""
        tasks = list(self._local.tasks.values())
        for task in tasks:
            if not task.cancelling():  # one already stopping is storing its partial reply: let it
                task.cancel(SHUTDOWN)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._writer.close()

    def _follow_stream(
        self, turn_id: str, *, after: str, heartbeat_seconds: float, seen: OpenParts
    ) -> AsyncIterator[tuple[str, bytes | None]]:
        async def on_idle() -> bool:
            info = await self._registry.info(turn_id)
            if info is None or info.status != "running":
                return True
            return await self._supervisor.reap_if_owner_gone(turn_id)

        entries = self._registry.follow(turn_id, after=after, heartbeat_seconds=heartbeat_seconds, on_idle=on_idle)

        async def read() -> AsyncIterator[tuple[str, bytes | None]]:
            try:
                async for entry in entries:
                    if entry[1] is not None:
                        seen.feed_json(entry[1])
                    yield entry
                return
            except TurnVanished:
                log.warning("turn %s: its stream vanished from Redis while followed; ending the follower", turn_id)
                reason = _STREAM_VANISHED
            except RedisError as e:
                log.warning("turn %s: following it failed (%s); ending the follower", turn_id, e)
                reason = _STREAM_UNREADABLE
            for chunk in seen.closing(reason):
                yield "", p.to_json(chunk)

        return explain_lost_tail(read(), turn_id=turn_id, after=after, registry=self._registry)

    async def send_ahead(self, req: TurnRequest) -> CallAhead | None:
        """Send the first model call of the turn `req` before `start`: see `turn.send_first_call_ahead`. Its caller
        starts the turn with it (`TurnRequest.ahead`) or discards it."""
        return await send_first_call_ahead(req, self._render_prompt(req), self._services)

    def _render_prompt(self, req: TurnRequest) -> SystemPrompt:
        return self._prompt().render(
            turn_variables(user_id=req.user_id, is_authenticated=req.is_authenticated, page_context=req.page_context)
        )

    async def _drive(self, req: TurnRequest, message_text: str, publisher: TurnPublisher) -> None:
        translator = UIStreamTranslator(approval_chunks=self._approval_chunks)
        status: TurnStatus = "completed"
        error_class: str | None = None
        freed = False
        prompt = self._render_prompt(req)
        log.info("turn %s: prompt %s@%s", req.turn_id, prompt.name, prompt.version)
        facts = TurnFacts(
            turn_id=req.turn_id,
            session_id=req.session_id,
            user_id=req.user_id,
            prompt_name=prompt.name,
            prompt_version=prompt.version,
            model=self._services.llm.model,
            message_chars=len(message_text),
            message_text=message_text,
        )
        telemetry = start_turn(self._telemetry, facts)

        def emit(event: ev.TurnEvent) -> None:
            for chunk in translator.translate(event):
                publisher.emit(chunk)

        try:
            async with asyncio.timeout(self._turn_max_seconds):
                async for event in stream_chat_completion(req, prompt, self._services, telemetry):
                    if isinstance(event, ev.TurnFailed):
                        status, error_class = "failed", event.code
                    elif isinstance(event, ev.TurnEnded) and event.session_freed:
                        freed = True
                        self._local.anchored.pop(req.turn_id, None)  # nothing left to renew
                    emit(event)
        except TimeoutError:
            status, error_class = "failed", "timeout"
            emit(ev.TurnFailed(f"The reply took longer than {self._turn_max_seconds:g}s and was stopped.", "timeout"))
        except asyncio.CancelledError as e:
            if CANCEL in e.args:
                status = "cancelled"
                emit(ev.TurnAborted("stopped by the user"))
            else:
                status = "interrupted"
                emit(ev.TurnFailed("The reply was interrupted because the server is shutting down.", "interrupted"))
        except StorageUnavailable as e:  # Postgres went away before the turn had its history
            log.warning("turn %s failed: %s", req.turn_id, e.message)
            status, error_class = "failed", e.code
            emit(ev.TurnFailed(e.message, "storage_unavailable"))
        except Exception as e:
            log.exception("turn %s failed", req.turn_id)
            status, error_class = "failed", type(e).__name__
            emit(ev.TurnFailed("Something went wrong while generating the reply.", "internal_error"))
        finally:
            if req.ahead is not None:
                req.ahead.discard()  # not taken up: the turn ended before its first model call, or sent another
            reason = {"completed": "stop", "cancelled": "other"}.get(status, "error")
            for chunk in translator.close(reason):
                publisher.emit(chunk)
            telemetry.ended(status=status, error_class=error_class)
            await asyncio.shield(self._finish(req, publisher, status, freed=freed))

    async def _finish(self, req: TurnRequest, publisher: TurnPublisher, status: TurnStatus, *, freed: bool) -> None:
        # Everything the turn stores is stored: free the session in Postgres before the end reaches the followers,
        # so a client that sends its next message on `[DONE]` finds it free. The Redis pointer goes last. `freed`:
        # the append of the last step did it already, in its own transaction (no round trip of its own here).
        self._local.anchored.pop(req.turn_id, None)  # no renewal after this point
        try:
            if not freed:
                await self._active.release_anchor(req.session_id, req.turn_id)
        except Exception:
            # Postgres is down (its reply may be kept in Redis meanwhile). The supervisor tries again every tick, and
            # a message that finds this ended turn still holding the session frees it itself.
            log.warning("turn %s: could not free its session in Postgres yet; retrying", req.turn_id)
            self._local.unreleased[req.turn_id] = req.session_id
        released = False
        try:
            # One round trip: the last step's cache update (a client that reads the session on `finish` finds its
            # reply), the user's slot (a client that saw the end may start another turn at once), the end with the
            # last chunks, the Redis pointer.
            await publisher.close(
                status,
                before=[*req.end_work, *self._quota.releasing(req.user_id, req.turn_id)],
                along=[self._active.queue_drop_fast(req.session_id, req.turn_id)],
            )
            released = True
        finally:
            if not released:
                if req.end_work:  # the cache may not have learnt of the last step: drop what it holds
                    await self._services.store.messages_changed(req.session_id)
                await self._quota.release(req.user_id, req.turn_id)
                await self._active.drop_fast(req.session_id, req.turn_id)
