"""Starting turns and driving them in the background, detached from the HTTP request that asked for them.

`submit` stores the user message (idempotently), claims the session's active turn (the Redis pointer first, then
Postgres in the message's own transaction: see `session_admission.py`) and starts the turn as a task this pod owns; the
request that asked only subscribes to the turn's stream, so a client that disconnects does not stop the turn.
`_drive` feeds the engine's events through the UI translator into the turn's Redis Stream and writes the end exactly
once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import RedisError

from backend.cancellation import check_cancelled
from backend.chat import events as ev
from backend.chat import protocol as p
from backend.chat.admission import TurnAdmission, Unlimited, billed_context, billed_to
from backend.chat.lapses import LapseWatch
from backend.chat.open_parts import OpenParts
from backend.chat.prompt import SystemPrompt, turn_variables
from backend.chat.publisher import TurnPublisher
from backend.chat.recovery import explain_lost_tail, reap
from backend.chat.session_admission import SessionAdmission
from backend.chat.title import TitleWriter
from backend.chat.tokens import TokenCounter
from backend.chat.turn import stream_chat_completion
from backend.chat.turn_state import TurnRequest, TurnServices
from backend.chat.ui_stream import UIStreamTranslator
from backend.errors import Conflict, StorageUnavailable
from backend.observability.telemetry import NullTelemetry, Telemetry, TurnFacts, start_turn
from backend.store.models import ActiveTurnHeld, ChatSession, NewMessage
from backend.store.operations import Operation
from backend.store.sessions import SessionStore
from backend.streams.turns import TurnRegistry, TurnStatus, TurnVanished, position_of

log = logging.getLogger("copilot.runner")

_TURN_NAMESPACE = uuid.UUID("6f6c1b2e-8d43-4c55-9b0e-2f1f6a7c9d10")
_CANCEL, _SHUTDOWN = "cancel", "shutdown"
_CANCEL_POLL_SECONDS = 0.25
_CANCEL_WAIT_SECONDS = 3.0
_STREAM_VANISHED = (
    "The live stream of this reply was lost (the server's stream store was reset). The reply is still stored when "
    "it ends: reload the conversation to see it."
)
_STREAM_UNREADABLE = (
    "The live stream of this reply could not be read any more. The reply is still stored when it ends: reload the "
    "conversation to see it."
)

DoubleTexting = Literal["reject", "interrupt", "enqueue"]


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
        services: TurnServices,
        store: SessionStore,
        registry: TurnRegistry,
        admission: SessionAdmission,
        titles: TitleWriter,
        prompt: Callable[[], SystemPrompt],
        counter: TokenCounter,
        turn_max_seconds: float,
        publish_window_seconds: float,
        double_texting: DoubleTexting = "reject",
        telemetry: Telemetry | None = None,
        model: str = "",
        quota: TurnAdmission | None = None,
    ) -> None:
        self._services = services
        self._store = store
        self._registry = registry
        self._admission = admission
        self._titles = titles
        self._prompt = prompt
        self._counter = counter
        self._turn_max_seconds = turn_max_seconds
        self._window = publish_window_seconds
        self._double_texting = double_texting
        self._telemetry = telemetry or NullTelemetry()
        self._model = model
        self._quota = quota or Unlimited()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._publishers: dict[str, TurnPublisher] = {}
        """The turns this pod runs, for followers on this pod (read from memory, not from Redis)."""
        self._supervisor: asyncio.Task[None] | None = None
        self._draining = False
        self._unreleased: dict[str, uuid.UUID] = {}
        """Ended turns whose Postgres anchor could not be freed yet (turn id → session id): the supervisor retries."""
        self._anchored: dict[str, uuid.UUID] = {}
        """This pod's turns that hold their session in Postgres (turn id → session id): the leases it renews."""
        # Two of an owner's renewal periods: after Redis was away, a live owner renews within that time.
        self._lapses = LapseWatch(grace_seconds=registry.lease_seconds * 2 / 3)

    async def submit(
        self, session: ChatSession, user_id: str, message: UserMessage, *, is_authenticated: bool, limited: bool = True
    ) -> Submitted:
        """Start a turn for `message`, or find the one a resend of it started. `limited`: the user's limits may
        refuse it (`RateLimited`, nothing stored); a resend never takes a second slot."""
        turn_id = _turn_id(session.id, message.client_message_id)
        earlier = await self._registry.info(turn_id)
        if earlier is not None and earlier.status != "failed":
            return Submitted(turn_id, None, repeated=True)  # a resend: the turn exists, follow it
        # A resend of a message whose turn failed (Retry after an error) is a new attempt under the same turn id,
        # its stream opened afresh; the message is not stored again, and if the failed turn stored part of a reply,
        # the check below refuses it (409) like any message already answered.
        admission = self._admission
        while True:
            while not await admission.claim_fast(session.id, turn_id):
                current = await admission.current(session.id)
                if current == turn_id:
                    return Submitted(turn_id, None, repeated=True)
                if current is None:
                    continue  # released between our claim and our read: try again
                await self._make_way(session.id, current)
            try:
                # After a resend was recognised (it takes no second slot), before anything is stored.
                await self._quota.admit(user_id, turn_id, enforce=limited)
            except BaseException:
                await admission.drop_fast(session.id, turn_id)
                raise
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
                    claim=admission.claim(turn_id),
                )
            except ActiveTurnHeld as held:
                # Redis had forgotten the running turn (flushed, or restarted without its data); Postgres had not.
                await admission.drop_fast(session.id, turn_id)
                if held.turn_id == turn_id:
                    return Submitted(turn_id, None, repeated=True)  # its slot is that running turn's
                await self._quota.release(user_id, turn_id)
                if await self._ended(held.turn_id):
                    # It ended while Postgres was down, so it could not free the session: do it for it.
                    await admission.release_anchor(session.id, held.turn_id)
                    continue
                await self._make_way(session.id, held.turn_id)
                continue
            except BaseException:
                await self._quota.release(user_id, turn_id)
                await admission.drop_fast(session.id, turn_id)
                raise
            break
        try:
            user = stored.messages[0]
            # A message stored before whose turn is unknown (expired, or its pod died before starting it) is
            # answered now only if nothing answered it yet.
            latest = stored.session or await self._store.get(session.id, user_id)
            if stored.duplicates and user.sequence != latest.message_count:
                raise Conflict("this message was already answered", message_id=str(user.id))
            await self._registry.create(turn_id, str(session.id), user_id)
        except BaseException:
            await self._quota.release(user_id, turn_id)
            await admission.release(session.id, turn_id)
            raise
        request = TurnRequest(
            turn_id=turn_id,
            session_id=session.id,
            user_id=user_id,
            is_authenticated=is_authenticated,
            page_context=message.page_context,
            session=session,
        )
        self._start(request, message.text)
        if session.title is None and user.sequence == 1:
            with billed_to(user_id):  # the title task inherits who pays for its model call
                self._titles.schedule(session.id, user_id, message.text)
        return Submitted(turn_id, user.sequence, repeated=False)

    async def _ended(self, turn_id: str) -> bool:
        """Whether the turn is known to have ended (its stream's status says so); False when unknown."""
        try:
            info = await self._registry.info(turn_id)
        except RedisError:
            return False
        return info is not None and info.status != "running"

    async def _make_way(self, session_id: uuid.UUID, current: str) -> None:
        """Apply the double-texting policy to the session's running turn `current`."""
        if self._double_texting == "reject":
            raise Conflict("a reply is still being generated in this session", active_task_id=current)
        if self._double_texting == "interrupt":
            await self.cancel(session_id)
            return
        # enqueue: wait for the running turn to end (its lease bounds the wait if its pod dies)
        deadline = asyncio.get_running_loop().time() + self._turn_max_seconds + self._registry.lease_seconds * 2
        while await self._admission.current(session_id) == current:
            if asyncio.get_running_loop().time() > deadline:
                raise Conflict("the previous reply did not finish in time", active_task_id=current)
            if await self._owner_gone(current, session_id):
                await self._reap(current, session_id)
            await asyncio.sleep(0.05)

    async def cancel(self, session_id: uuid.UUID) -> str | None:
        """Stop the session's running turn from any pod; returns its task id once it has ended (None if idle)."""
        turn_id = await self._admission.current(session_id)
        if turn_id is None:
            return None
        task = self._tasks.get(turn_id)
        if task is not None:
            _stop(task)
        else:
            await self._registry.request_cancel(turn_id)  # its owner polls for this
        for _ in range(int(_CANCEL_WAIT_SECONDS / 0.05)):
            # The owner frees the session last (after storing the partial reply and writing the end): once it has,
            # a new message is accepted at once.
            if await self._admission.current(session_id) != turn_id:
                break
            if await self._owner_gone(turn_id, session_id):
                await self._reap(turn_id, session_id)
            await asyncio.sleep(0.05)
        return turn_id

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
        publisher = self._publishers.get(turn_id)
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

    def _follow_stream(
        self, turn_id: str, *, after: str, heartbeat_seconds: float, seen: OpenParts
    ) -> AsyncIterator[tuple[str, bytes | None]]:
        async def on_idle() -> bool:
            info = await self._registry.info(turn_id)
            if info is None or info.status != "running":
                return True
            if await self._owner_gone(turn_id):
                await self._reap(turn_id)
                return True
            return False

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

    async def start(self) -> None:
        """Start this pod's supervisor: lease renewal, stop requests, and closing turns of dead pods."""
        self._supervisor = asyncio.create_task(self._supervise(), name="turn-supervisor")

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = self._registry.lease_seconds / 3
        next_renewal = 0.0
        while True:
            check_cancelled()
            await asyncio.sleep(_CANCEL_POLL_SECONDS)
            try:
                # A turn that wrote to Redis lately learnt of a stop request from that write; ask for the others.
                quiet_since = loop.time() - _CANCEL_POLL_SECONDS
                local = [turn_id for turn_id, pub in self._publishers.items() if pub.last_write < quiet_since]
                for turn_id in await self._registry.cancel_requested(local):
                    task = self._tasks.get(turn_id)
                    if task is not None:
                        _stop(task)
            except Exception:
                log.exception("turn supervisor: polling stop requests failed")
            if loop.time() >= next_renewal:
                next_renewal = loop.time() + renew_every
                # Each step on its own: Redis being away must not keep the Postgres leases from being renewed.
                # Postgres first, so a turn's Redis lease never lapses before its Postgres one: whoever closes a turn
                # when its Redis lease lapsed can free its session at once.
                await self._guarded("renewing leases in Postgres", self._renew_anchors())
                await self._guarded("freeing ended turns' sessions in Postgres", self._release_ended())
                await self._guarded("renewing leases in Redis", self._registry.renew(self._tasks))
                await self._guarded("closing turns of dead pods", self._reap_expired())

    async def _guarded(self, what: str, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            log.exception("turn supervisor: %s failed", what)

    async def _renew_anchors(self) -> None:
        anchored = dict(self._anchored)
        held = await self._admission.renew(anchored)
        for turn_id in anchored.keys() - held:
            if turn_id in self._anchored:  # not ended meanwhile
                log.warning("turn %s no longer holds its session in Postgres (its lease lapsed)", turn_id)

    async def _release_ended(self) -> None:
        for turn_id, session_id in list(self._unreleased.items()):
            await self._admission.release_anchor(session_id, turn_id)
            self._unreleased.pop(turn_id, None)

    async def _reap_expired(self) -> None:
        """Close turns whose owner stopped renewing: listed by their Redis lease, and (what a Redis flush cannot
        hide) by their Postgres lease."""
        self._lapses.prune()
        try:
            expired = await self._registry.expired()
        except RedisError:
            self._lapses.reset()
            raise
        for turn_id in expired:
            if turn_id not in self._tasks and self._lapses.confirmed(turn_id, True):
                await self._reap(turn_id)
        for session_id, turn_id in await self._admission.lapsed():
            # A turn whose Redis lease is still fresh has a live owner (only Postgres was out of its reach).
            if turn_id not in self._tasks and await self._owner_gone(turn_id, session_id):
                await self._reap(turn_id, session_id)

    async def _owner_gone(self, turn_id: str, session_id: uuid.UUID | None = None) -> bool:
        """The turn's owner stopped renewing it, as this pod has seen for a while (see `LapseWatch`): its Redis
        lease says so, or, when Redis knows no lease for it (a flush), its Postgres lease does (given
        `session_id`; without it, a turn Redis holds no lease for is taken as not leased yet)."""
        try:
            deadline = await self._registry.lease_deadline(turn_id)
        except RedisError:
            self._lapses.reset()
            raise
        if deadline is not None:
            lapsed = deadline < time.time()
        elif session_id is not None:
            lapsed = await self._admission.anchor_lapsed(session_id, turn_id)
        else:
            lapsed = False
        return self._lapses.confirmed(turn_id, lapsed)

    async def _reap(self, turn_id: str, session_id: uuid.UUID | None = None) -> None:
        """Close a turn whose owner died and free its session. With `session_id` (a turn found through its
        Postgres lease), the session is freed even when Redis no longer knows the turn."""
        self._lapses.forget(turn_id)
        closed = await reap(
            turn_id,
            registry=self._registry,
            store=self._store,
            active=self._admission.for_reaping(),
            counter=self._counter,
        )
        if not closed and session_id is not None and await self._admission.release_lapsed(session_id, turn_id):
            log.warning("turn %s lost its owner and Redis lost its stream; its session is free again", turn_id)

    async def continue_operation(self, op: Operation) -> None:
        """Go on with the conversation after a long-running operation finished: a turn without a new user message,
        on the operation's task stream, once the session is free. Idempotent (the turn id is the task id)."""
        info = await self._registry.info(op.task_id)
        if op.task_id in self._tasks or (info is not None and info.status != "running"):
            return
        deadline = asyncio.get_running_loop().time() + self._turn_max_seconds + self._registry.lease_seconds * 2
        while True:
            current: str | None
            if await self._admission.claim_fast(op.session_id, op.task_id):
                current = await self._admission.claim_anchor(op.session_id, op.task_id)
                if current is None:
                    break
                await self._admission.drop_fast(op.session_id, op.task_id)  # Redis had forgotten `current`
            else:
                current = await self._admission.current(op.session_id)
            if current == op.task_id:
                return  # another pod is running it
            if current is not None and await self._owner_gone(current, op.session_id):
                await self._reap(current, op.session_id)
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"session {op.session_id} stayed busy; the continuation is retried later")
            await asyncio.sleep(0.1)
        # Read again: another pod (one that took this completion over while we waited) may have run and ended the
        # continuation in the meantime; it ends the stream before it frees the session.
        try:
            info = await self._registry.info(op.task_id)
            if info is not None and info.status != "running":
                await self._admission.release(op.session_id, op.task_id)
                return
            if info is None:  # the task stream expired while the operation ran (or Redis lost it)
                await self._registry.create(op.task_id, str(op.session_id), op.user_id)
            else:
                await self._registry.adopt(op.task_id)
        except BaseException:
            await self._admission.release(op.session_id, op.task_id)
            raise
        note = (
            f'<operation_finished tool="{op.tool_name}" operation_id="{op.operation_id}">The long-running operation '
            "has finished; its result is now in the tool message above. Tell the user what came of it."
            "</operation_finished>"
        )
        request = TurnRequest(
            turn_id=op.task_id, session_id=op.session_id, user_id=op.user_id, is_authenticated=True, note=note
        )
        # Never refused: the operation's result is stored already and must be told; the turn still holds a slot.
        await self._quota.admit(op.user_id, op.task_id, enforce=False)
        self._start(request, "")

    async def active_task(self, session_id: uuid.UUID) -> tuple[str, TurnStatus] | None:
        """The session's running turn (task id and status), if any."""
        turn_id = await self._admission.current_fast(session_id)
        if turn_id is None:
            return None
        info = await self._registry.info(turn_id)
        return (turn_id, info.status) if info is not None else None

    async def wait(self, turn_id: str) -> None:
        """Until the turn ends, if it runs on this pod. A waiter that goes away does not cancel the turn."""
        task = self._tasks.get(turn_id)
        if task is not None:
            await asyncio.shield(task)

    @property
    def draining(self) -> bool:
        """This pod is shutting down: no new turn may start here (the running ones may still end on their own)."""
        return self._draining

    def refuse_new_turns(self) -> None:
        """From now on `draining` is true (the routes refuse new turns)."""
        self._draining = True

    async def drain(self, grace_seconds: float) -> None:
        """Wind down for an orchestrator's SIGTERM: refuse new turns from now on, give the running ones
        `grace_seconds` to end on their own, then stop the rest as `shutdown` does (their partial replies stored
        `[interrupted]`, their streams ended with `error` and `finish`). Followers keep working meanwhile."""
        self.refuse_new_turns()
        running = list(self._tasks.values())
        if running:
            log.info("draining: %d running turn(s) get %gs to finish", len(running), grace_seconds)
            await asyncio.wait(running, timeout=grace_seconds)
        await self._stop_turns()

    async def shutdown(self) -> None:
        """Stop every turn of this pod; each stores its partial reply and ends its stream as interrupted."""
        self._draining = True
        await self._stop_turns()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)

    async def _stop_turns(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            if not task.cancelling():  # one already stopping is storing its partial reply: let it
                task.cancel(_SHUTDOWN)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, req: TurnRequest, message_text: str) -> None:
        """Run the turn as a task of this pod; its publisher exists before anyone follows it."""
        turn_id = req.turn_id
        publisher = TurnPublisher(
            self._registry,
            turn_id,
            window_seconds=self._window,
            on_cancel_requested=lambda: _stop(task),
        )
        self._publishers[turn_id] = publisher
        self._anchored[turn_id] = req.session_id
        task = asyncio.create_task(
            self._drive(req, message_text, publisher), name=f"turn-{turn_id}", context=billed_context(req.user_id)
        )
        self._tasks[turn_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(turn_id, None)
            self._anchored.pop(turn_id, None)
            if self._publishers.get(turn_id) is publisher:
                del self._publishers[turn_id]
            publisher.abandon()

        task.add_done_callback(done)

    async def _drive(self, req: TurnRequest, message_text: str, publisher: TurnPublisher) -> None:
        translator = UIStreamTranslator()
        status: TurnStatus = "completed"
        error_class: str | None = None
        prompt = self._prompt().render(
            turn_variables(user_id=req.user_id, is_authenticated=req.is_authenticated, page_context=req.page_context)
        )
        log.info("turn %s: prompt %s@%s", req.turn_id, prompt.name, prompt.version)
        facts = TurnFacts(
            turn_id=req.turn_id,
            session_id=req.session_id,
            user_id=req.user_id,
            prompt_name=prompt.name,
            prompt_version=prompt.version,
            model=self._model,
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
                    emit(event)
        except TimeoutError:
            status, error_class = "failed", "timeout"
            emit(ev.TurnFailed(f"The reply took longer than {self._turn_max_seconds:g}s and was stopped.", "timeout"))
        except asyncio.CancelledError as e:
            if _CANCEL in e.args:
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
            reason = {"completed": "stop", "cancelled": "other"}.get(status, "error")
            for chunk in translator.close(reason):
                publisher.emit(chunk)
            telemetry.ended(status=status, error_class=error_class)
            await asyncio.shield(self._finish(req, publisher, status))

    async def _finish(self, req: TurnRequest, publisher: TurnPublisher, status: TurnStatus) -> None:
        # Everything the turn stores is stored: free the session in Postgres before the end reaches the followers,
        # so a client that sends its next message on `[DONE]` finds it free. The Redis pointer goes last.
        self._anchored.pop(req.turn_id, None)  # no renewal after this point
        try:
            await self._admission.release_anchor(req.session_id, req.turn_id)
        except Exception:
            # Postgres is down (its reply may be kept in Redis meanwhile). The supervisor tries again every tick, and
            # a message that finds this ended turn still holding the session frees it itself.
            log.warning("turn %s: could not free its session in Postgres yet; retrying", req.turn_id)
            self._unreleased[req.turn_id] = req.session_id
        try:
            # The slot goes back before the end is written: a client that saw the end may start another turn at once.
            await self._quota.release(req.user_id, req.turn_id)
            await publisher.close(status)
        finally:
            await self._admission.drop_fast(req.session_id, req.turn_id)


def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a turn once: the cancel flag stays set while it winds down, and a second cancellation would cut short
    the storing of its partial reply and the writing of its end."""
    if not task.cancelling():
        task.cancel(_CANCEL)


def _turn_id(session_id: uuid.UUID, client_message_id: str | None) -> str:
    """Same session and client message id, same turn: a resend finds the turn instead of starting another."""
    if client_message_id is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_TURN_NAMESPACE, f"{session_id}:{client_message_id}"))
