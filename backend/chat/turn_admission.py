"""Letting turns in: a user message (idempotent per client message id), a continuation after a long-running
operation, and the stop button, whichever pod runs the session's turn.

`submit` claims the session's active turn (the Redis pointer first, then Postgres in the message's own transaction:
see `session_admission.py`), stores the user message and hands the turn to the driver; the request that asked only
follows it. The turn's first model call goes out before the message is stored, built from the history read with
the claim (`_send_ahead`, `llm_ahead.py`): the store's round trips overlap the model's wait for its first token. A
message that finds the session busy gets the double-texting policy (`reject`, `interrupt`, `enqueue`). Waiting for
a session to be free is one helper, `_until_free`, which closes the running turn itself when its owner is gone.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from redis.exceptions import RedisError

from backend.chat.llm_ahead import CallAhead
from backend.chat.local_turns import LocalTurns
from backend.chat.quota import TurnQuota, billed_to
from backend.chat.session_admission import SessionAdmission
from backend.chat.title import TitleWriter
from backend.chat.tokens import TokenCounter
from backend.chat.turn_capacity import TurnCapacity
from backend.chat.turn_driver import TurnDriver
from backend.chat.turn_state import Resume, TurnRequest, UserMessage
from backend.chat.turn_supervisor import TurnSupervisor
from backend.errors import Conflict
from backend.store.models import ActiveTurnHeld, ChatSession, MessageRow, NewMessage
from backend.store.operations import Operation
from backend.store.sessions import SessionStore, message_rows_from
from backend.streams.active import Claim
from backend.streams.turns import TurnInfo, TurnRegistry, TurnStatus, info_from
from backend.tools.frontend import FrontendTool

log = logging.getLogger("copilot.admission")

_TURN_NAMESPACE = uuid.UUID("6f6c1b2e-8d43-4c55-9b0e-2f1f6a7c9d10")
_STOP_WAIT_SECONDS = 3.0

DoubleTexting = Literal["reject", "interrupt", "enqueue"]


@dataclass(frozen=True, slots=True)
class Submitted:
    turn_id: str
    user_sequence: int | None
    """Sequence of the stored user message (None when the request repeated one whose turn is known)."""
    repeated: bool


class TurnAdmission:
    def __init__(
        self,
        local: LocalTurns,
        driver: TurnDriver,
        supervisor: TurnSupervisor,
        *,
        store: SessionStore,
        registry: TurnRegistry,
        active: SessionAdmission,
        quota: TurnQuota,
        titles: TitleWriter,
        counter: TokenCounter,
        turn_max_seconds: float,
        double_texting: DoubleTexting = "reject",
        capacity: TurnCapacity | None = None,
    ) -> None:
        """`capacity`: the pod's cap on running turns (None: no cap)."""
        self._local = local
        self._driver = driver
        self._supervisor = supervisor
        self._store = store
        self._registry = registry
        self._active = active
        self._quota = quota
        self._titles = titles
        self._counter = counter
        self._turn_max_seconds = turn_max_seconds
        self._double_texting = double_texting
        self._draining = False
        self._capacity = capacity or TurnCapacity(local)

    @property
    def draining(self) -> bool:
        """This pod is shutting down: no new turn may start here (the running ones may still end on their own)."""
        return self._draining

    def refuse_new_turns(self) -> None:
        """From now on `draining` is true (the routes refuse new turns)."""
        self._draining = True

    async def refuse_if_full(self, turn_id: str) -> None:
        """At the door of a request that would start `turn_id` here, before it stores anything (frontend tools, an
        AG-UI thread): `Overloaded` when this pod runs its cap of turns and `turn_id` is not a turn that exists
        already (a resend follows its turn). No I/O while there is room; `submit` and `resume` check again as they
        take the turn's seat."""
        capacity = self._capacity
        if not capacity.full or capacity.holds(turn_id):
            return
        if not _followed(await self._registry.info(turn_id)):
            raise capacity.overloaded()

    async def submit(
        self, session: ChatSession, user_id: str, message: UserMessage, *, is_authenticated: bool, limited: bool = True
    ) -> Submitted:
        """Start a turn for `message`, or find the one a resend of it started. `limited`: the user's limits may
        refuse it (`RateLimited`, nothing stored); a resend never takes a second slot. `Overloaded` (nothing stored
        or claimed) when this pod runs its cap of turns; a resend of a turn that exists is never refused by it."""
        turn_id = turn_id_for(session.id, message.client_message_id)
        # Without a client message id the turn id is new (random): no earlier turn to look for. Otherwise the look
        # shares the claim's round trip (useChat names every message), except while the pod runs its cap of turns:
        # then only a resend is let in, so the look comes first, on its own, before a seat is asked for.
        look_along = message.client_message_id is not None and not self._capacity.full
        if message.client_message_id is not None and not look_along and _followed(await self._registry.info(turn_id)):
            return Submitted(turn_id, None, repeated=True)
        # The claim's round trip also reads the history the prompt starts from: the first model call can then go
        # out while the message is being stored (`_send_ahead`).
        reading = self._store.reading_message_rows(session.id, after=session.summary_through)
        with self._capacity.seat(turn_id):
            if not look_along:
                claim, (read,) = await self._active.claim_fast_along(session.id, turn_id, [reading])
            else:
                claim, (found, read) = await self._active.claim_fast_along(
                    session.id, turn_id, [self._registry.looking_up(turn_id), reading]
                )
                resend = True  # until the record says otherwise: a record that cannot be read gives the claim back too
                try:
                    resend = _followed(info_from(turn_id, found[0]))
                finally:
                    if resend and claim is not None:  # a resend of a turn that has ended claimed the free session
                        await self._active.drop_fast(session.id, turn_id)
                if resend:
                    return Submitted(turn_id, None, repeated=True)  # the turn exists: follow it
            history = message_rows_from(read) if claim is not None else None
            return await self._admit_message(
                session, user_id, message, turn_id, is_authenticated, limited, claim, history
            )

    async def _admit_message(
        self,
        session: ChatSession,
        user_id: str,
        message: UserMessage,
        turn_id: str,
        is_authenticated: bool,
        limited: bool,
        claim: Claim | None,
        history: list[MessageRow] | None = None,
    ) -> Submitted:
        """`submit` for a message that starts a turn (or a new attempt of a failed one), its seat taken and the
        session's pointer claimed once (`claim`: None when another turn held it). `history`: the session's cached
        messages after its summary, read with that claim (None: not read, or not cached)."""
        active = self._active
        user = NewMessage(
            "user",
            message.text,
            client_message_id=message.client_message_id,
            token_count=self._counter.count_message({"role": "user", "content": message.text}),
        )
        ahead: CallAhead | None = None
        try:
            while True:
                while claim is None:
                    history = None  # read with a claim that failed: another turn may have added to it since
                    current = await active.current(session.id)
                    if current == turn_id:
                        return Submitted(turn_id, None, repeated=True)
                    if current is not None:  # else released between our claim and our read: try again
                        await self._make_way(session.id, current)
                    claim = await active.claim_fast(session.id, turn_id)
                try:
                    # After a resend was recognised (it takes no second slot), before anything is stored.
                    await self._quota.admit(user_id, turn_id, enforce=limited)
                except BaseException:
                    await active.drop_fast(session.id, turn_id)
                    raise
                if history is not None and not claim.pending_writes:
                    ahead = await self._send_ahead(session, user_id, message, turn_id, is_authenticated, user, history)
                try:
                    stored = await self._store.append(
                        session.id,
                        [user],
                        claim=active.claim(turn_id),
                        settle_awaiting=True,  # calls still waiting for the user close as unanswered (documented)
                        no_pending=not claim.pending_writes,  # the claim asked
                        read_after=session.summary_through,  # the turn's history, read with the cache update
                        along=self._registry.opening(turn_id, str(session.id), user_id),  # the stream opens with it
                    )
                except ActiveTurnHeld as held:
                    # Redis had forgotten the running turn (flushed, or restarted without its data); Postgres had not.
                    if ahead is not None:
                        ahead.discard()
                        ahead = history = None
                    await active.drop_fast(session.id, turn_id)
                    if held.turn_id == turn_id:
                        return Submitted(turn_id, None, repeated=True)  # its slot is that running turn's
                    await self._quota.release(user_id, turn_id)
                    if await self._ended(held.turn_id):
                        # It ended while Postgres was down, so it could not free the session: do it for it.
                        await active.release_anchor(session.id, held.turn_id)
                    else:
                        await self._make_way(session.id, held.turn_id)
                    claim = await active.claim_fast(session.id, turn_id)
                    continue
                except BaseException:
                    await self._quota.release(user_id, turn_id)
                    await active.drop_fast(session.id, turn_id)
                    raise
                break
            try:
                stored_user = stored.messages[0]
                # A message stored before whose turn is unknown (expired, or its pod died before starting it) is
                # answered now only if nothing answered it yet.
                latest = stored.session or await self._store.get(session.id, user_id)
                if stored.duplicates and stored_user.sequence != latest.message_count:
                    raise Conflict("this message was already answered", message_id=str(stored_user.id))
            except BaseException:
                await self._quota.release(user_id, turn_id)
                await active.release(session.id, turn_id)
                raise
            if not stored.sent_along:  # the stream did not open with the cache update (nothing new, or it failed)
                await self._open_stream(session.id, user_id, turn_id)
            request = _turn_request(session, user_id, message, turn_id, is_authenticated, claim, stored.history)
            self._driver.start(replace(request, ahead=ahead), message.text)
            ahead = None  # the turn's now: it takes it up or discards it
        finally:
            if ahead is not None:
                ahead.discard()
        if session.title is None and stored_user.sequence == 1:
            with billed_to(user_id):  # the title task inherits who pays for its model call
                self._titles.schedule(session.id, user_id, message.text)
        return Submitted(turn_id, stored_user.sequence, repeated=False)

    async def _send_ahead(
        self,
        session: ChatSession,
        user_id: str,
        message: UserMessage,
        turn_id: str,
        is_authenticated: bool,
        user: NewMessage,
        history: list[MessageRow],
    ) -> CallAhead | None:
        """Send the turn's first model call before its user message is stored, from the history read with the claim
        and the message as it will be stored. The turn takes it up only if it builds the very same request from what
        the append returns (`llm_ahead`); a failure here only means the turn sends its own."""
        sequence = history[-1]["sequence"] + 1 if history else session.summary_through + 1
        row = MessageRow(
            sequence=sequence,
            role="user",
            content=user.content,
            tool_calls=None,
            tool_call_id=None,
            name=None,
            refusal=None,
            token_count=user.token_count,
        )
        guess = _turn_request(session, user_id, message, turn_id, is_authenticated, None, [*history, row])
        try:
            return await self._driver.send_ahead(guess)
        except Exception:
            log.warning("turn %s: its first model call could not be sent ahead", turn_id, exc_info=True)
            return None

    async def resume(
        self,
        session: ChatSession,
        user_id: str,
        resume: Resume,
        *,
        frontend_tools: tuple[FrontendTool, ...],
        is_authenticated: bool,
        limited: bool = True,
    ) -> Submitted:
        """Continue the message whose calls waited for a person, now that all are answered: a turn without a user
        message whose id is the message's, so every pod and every resend of the last answer find the same turn.
        `Overloaded` when this pod runs its cap of turns: the answers are stored, and a resend of the last one
        starts the continuation (here when a turn has ended, or on another pod)."""
        turn_id = continuation_id(session.id, resume.asked_in)
        if _followed(await self._registry.info(turn_id)):
            return Submitted(turn_id, None, repeated=True)
        active = self._active
        with self._capacity.seat(turn_id):
            while (holder := await self._claim(session.id, turn_id)) is not None:
                if holder == turn_id:
                    return Submitted(turn_id, None, repeated=True)
                await self._make_way(session.id, holder)
            try:
                await self._quota.admit(user_id, turn_id, enforce=limited)
            except BaseException:
                await active.release(session.id, turn_id)
                raise
            await self._open_stream(session.id, user_id, turn_id)
            request = TurnRequest(
                turn_id=turn_id,
                session_id=session.id,
                user_id=user_id,
                is_authenticated=is_authenticated,
                session=session,
                frontend_tools=frontend_tools,
                resume=resume,
            )
            self._driver.start(request, "")
        return Submitted(turn_id, None, repeated=False)

    async def continuation_known(self, session_id: uuid.UUID, asked_in: int) -> bool:
        """Whether the continuation after the answers to the message at `asked_in` ran or runs (its stream is
        still known)."""
        return await self._registry.info(continuation_id(session_id, asked_in)) is not None

    async def cancel(self, session_id: uuid.UUID) -> str | None:
        """Stop the session's running turn from any pod; returns its task id once it has ended (None if idle)."""
        turn_id = await self._active.current(session_id)
        if turn_id is None:
            return None
        if not self._local.stop(turn_id):
            await self._registry.request_cancel(turn_id)  # its owner polls for this
        # The owner frees the session last (after storing the partial reply and writing the end): once it has, a new
        # message is accepted at once.
        await self._until_free(session_id, turn_id, within=_STOP_WAIT_SECONDS)
        return turn_id

    async def continue_operation(self, op: Operation) -> None:
        """Go on with the conversation after a long-running operation finished: a turn without a new user message,
        on the operation's task stream, once the session is free. Idempotent (the turn id is the task id)."""
        info = await self._registry.info(op.task_id)
        if self._driver.runs(op.task_id) or (info is not None and info.status != "running"):
            return
        deadline = asyncio.get_running_loop().time() + self._longest_wait()
        while (current := await self._claim_for(op)) is not None:
            if current == op.task_id:
                return  # another pod is running it
            if not await self._until_free(op.session_id, current, within=deadline - asyncio.get_running_loop().time()):
                raise TimeoutError(f"session {op.session_id} stayed busy; the continuation is retried later")
        # Read again: another pod (one that took this completion over while we waited) may have run and ended the
        # continuation in the meantime; it ends the stream before it frees the session.
        try:
            info = await self._registry.info(op.task_id)
            if info is not None and info.status != "running":
                await self._active.release(op.session_id, op.task_id)
                return
            if info is None:  # the task stream expired while the operation ran (or Redis lost it)
                await self._registry.create(op.task_id, str(op.session_id), op.user_id)
            else:
                await self._registry.adopt(op.task_id)
        except BaseException:
            await self._active.release(op.session_id, op.task_id)
            raise
        note = (
            f'<operation_finished tool="{op.tool_name}" operation_id="{op.operation_id}">The long-running operation '
            "has finished; its result is now in the tool message above. Tell the user what came of it."
            "</operation_finished>"
        )
        request = TurnRequest(
            turn_id=op.task_id, session_id=op.session_id, user_id=op.user_id, is_authenticated=True, note=note
        )
        # Never refused: the operation's result is stored already and must be told; the turn still holds a slot. Nor
        # by the pod's cap: no client waits to retry it elsewhere, and a refusal would spend the completion's
        # deliveries towards the dead-letter stream. It counts towards the cap while it runs.
        await self._quota.admit(op.user_id, op.task_id, enforce=False)
        self._driver.start(request, "")

    async def active_task(self, session_id: uuid.UUID) -> tuple[str, TurnStatus] | None:
        """The session's running turn (task id and status), if any."""
        turn_id = await self._active.current_fast(session_id)
        if turn_id is None:
            return None
        info = await self._registry.info(turn_id)
        return (turn_id, info.status) if info is not None else None

    async def _open_stream(self, session_id: uuid.UUID, user_id: str, turn_id: str) -> None:
        """Open the admitted turn's stream; if that fails, give back its slot and the session."""
        try:
            await self._registry.create(turn_id, str(session_id), user_id)
        except BaseException:
            await self._quota.release(user_id, turn_id)
            await self._active.release(session_id, turn_id)
            raise

    async def _make_way(self, session_id: uuid.UUID, current: str) -> None:
        """Apply the double-texting policy to the session's running turn `current`."""
        if self._double_texting == "reject":
            raise Conflict("a reply is still being generated in this session", active_task_id=current)
        if self._double_texting == "interrupt":
            await self.cancel(session_id)
            return
        # enqueue: wait for the running turn to end (its lease bounds the wait if its pod dies)
        if not await self._until_free(session_id, current, within=self._longest_wait()):
            raise Conflict("the previous reply did not finish in time", active_task_id=current)

    async def _until_free(self, session_id: uuid.UUID, turn_id: str, *, within: float) -> bool:
        """Wait until `turn_id` no longer holds the session, closing it meanwhile if its owner is gone; False if it
        still holds it after `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await self._active.current(session_id) == turn_id:
            if loop.time() > deadline:
                return False
            await self._supervisor.reap_if_owner_gone(turn_id, session_id)
            await asyncio.sleep(0.05)
        return True

    async def _claim_for(self, op: Operation) -> str | None:
        """Claim the session for the operation's continuation: None when claimed, else the turn holding it."""
        return await self._claim(op.session_id, op.task_id)

    async def _claim(self, session_id: uuid.UUID, turn_id: str) -> str | None:
        """Claim the session for a turn without a user message (a continuation): None when claimed, else the turn
        holding it (a turn that ended while Postgres was down is freed on the way)."""
        while True:
            while not await self._active.claim_fast(session_id, turn_id):
                current = await self._active.current(session_id)
                if current is not None:
                    return current
                # released between our claim and our read: try again
            holder = await self._active.claim_anchor(session_id, turn_id)
            if holder is None:
                return None
            await self._active.drop_fast(session_id, turn_id)  # Redis had forgotten `holder`
            if holder != turn_id and await self._ended(holder):
                await self._active.release_anchor(session_id, holder)
                continue
            return holder

    def _longest_wait(self) -> float:
        """How long the running turn may take to end: its duration cap, or its lease twice over if its pod died."""
        return self._turn_max_seconds + self._registry.lease_seconds * 2

    async def _ended(self, turn_id: str) -> bool:
        """Whether the turn is known to have ended (its stream's status says so); False when unknown."""
        try:
            info = await self._registry.info(turn_id)
        except RedisError:
            return False
        return info is not None and info.status != "running"


def _followed(earlier: TurnInfo | None) -> bool:
    """Whether a message whose turn is `earlier` is a resend to follow that turn: a turn that failed is tried again
    under the same id (its stream opened afresh; the message is not stored again, and if the failed turn stored part
    of a reply, the append's check refuses it, 409, like any message already answered)."""
    return earlier is not None and earlier.status != "failed"


def turn_id_for(session_id: uuid.UUID, client_message_id: str | None) -> str:
    """Same session and client message id, same turn: a resend finds the turn instead of starting another."""
    if client_message_id is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_TURN_NAMESPACE, f"{session_id}:{client_message_id}"))


def continuation_id(session_id: uuid.UUID, asked_in: int) -> str:
    """The turn id of the continuation after the answers to the calls of the message at sequence `asked_in`."""
    return str(uuid.uuid5(_TURN_NAMESPACE, f"{session_id}:answers:{asked_in}"))


def _turn_request(
    session: ChatSession,
    user_id: str,
    message: UserMessage,
    turn_id: str,
    is_authenticated: bool,
    claim: Claim | None,
    history: Sequence[MessageRow] | None,
) -> TurnRequest:
    """The turn a user message starts."""
    return TurnRequest(
        turn_id=turn_id,
        session_id=session.id,
        user_id=user_id,
        is_authenticated=is_authenticated,
        page_context=message.page_context,
        session=session,
        frontend_tools=message.frontend_tools or (),
        no_pending_writes=claim is not None and not claim.pending_writes,
        history=history,
    )
