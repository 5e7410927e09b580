"""Letting turns in, driving them and waiting for a busy session (`turn_admission.py`, `turn_driver.py`,
`turn_supervisor.py`), in the test's process: one pod's pieces wired by hand on the real stores and the mock model,
no app."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from backend import keys
from backend.chat.local_turns import LocalTurns
from backend.chat.session_admission import SessionAdmission
from backend.chat.title import TitleWriter
from backend.chat.turn_admission import DoubleTexting, TurnAdmission, turn_id_for
from backend.chat.turn_driver import TurnDriver
from backend.chat.turn_state import UserMessage
from backend.chat.turn_supervisor import TurnSupervisor
from backend.errors import Conflict
from backend.observability.telemetry import NullTelemetry
from backend.redis_batch import Group
from backend.store.active_turns import ActiveTurnStore
from backend.store.models import ChatSession
from backend.streams.active import ActiveTurns
from backend.streams.turns import TurnRegistry
from tests.chat.conftest import PROMPT, Kit, StoredRows

LEASE_SECONDS = 0.6


class NoQuota:
    async def admit(self, user_id: str, turn_id: str, *, enforce: bool) -> None:
        return None

    async def release(self, user_id: str, turn_id: str) -> None:
        return None

    def releasing(self, user_id: str, turn_id: str) -> Sequence[Group]:
        return ()


@dataclass
class Pod:
    admission: TurnAdmission
    driver: TurnDriver
    supervisor: TurnSupervisor
    registry: TurnRegistry
    active: SessionAdmission

    async def reply(self, session: ChatSession, text: str, client_id: str | None = None) -> list[dict[str, object]]:
        """Send `text` and follow its turn to the end, as the stream route does; the chunks."""
        submitted = await self.admission.submit(
            session, "alice", UserMessage(text, client_message_id=client_id), is_authenticated=True
        )
        return [
            orjson.loads(payload)
            async for _, payload in self.driver.follow(submitted.turn_id, heartbeat_seconds=5)
            if payload is not None
        ]


def make_pod(kit: Kit, pool: asyncpg.Pool, redis: Redis, double_texting: DoubleTexting) -> Pod:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=LEASE_SECONDS)
    active = SessionAdmission(ActiveTurns(redis, lease_seconds=60), ActiveTurnStore(pool), lease_seconds=LEASE_SECONDS)
    local = LocalTurns()
    supervisor = TurnSupervisor(local, registry=registry, active=active, store=kit.store, counter=kit.counter)
    driver = TurnDriver(
        local,
        supervisor,
        services=kit.services(),
        registry=registry,
        active=active,
        quota=NoQuota(),
        prompt=lambda: PROMPT,
        telemetry=NullTelemetry(),
        turn_max_seconds=30,
        publish_window_seconds=0.002,
    )
    admission = TurnAdmission(
        local,
        driver,
        supervisor,
        store=kit.store,
        registry=registry,
        active=active,
        quota=NoQuota(),
        titles=TitleWriter(kit.model, kit.store, model=None),
        counter=kit.counter,
        turn_max_seconds=30,
        double_texting=double_texting,
    )
    return Pod(admission, driver, supervisor, registry, active)


@pytest.fixture
async def pod(kit: Kit, pool: asyncpg.Pool, redis: Redis, request: pytest.FixtureRequest) -> AsyncIterator[Pod]:
    made = make_pod(kit, pool, redis, getattr(request, "param", "reject"))
    await made.supervisor.start()
    yield made
    await made.driver.shutdown()
    await made.supervisor.close()


async def ghost_turn(pod: Pod, session: ChatSession) -> str:
    """A turn holding `session` whose pod died: its lease is never renewed."""
    ghost = "ghost-turn"
    assert await pod.active.claim_fast(session.id, ghost)
    await pod.registry.create(ghost, str(session.id), "alice")
    return ghost


async def test_a_submitted_turn_is_followed_from_memory_to_its_end(kit: Kit, pod: Pod, stored_rows: StoredRows) -> None:
    session = await kit.session()

    chunks = await pod.reply(session, "[[mock:text tokens=5]]")

    assert [c["type"] for c in chunks][-2:] == ["finish-step", "finish"]
    assert [r[0] for r in await stored_rows(session.id)] == ["user", "assistant"]
    assert await pod.active.current(session.id) is None


@pytest.mark.parametrize(
    "message",
    ["[[mock:text tokens=5]]", '[[mock:tool name=calculate args={"expression": "6*7"}]]', "[[mock:server_error]]"],
)
async def test_the_turns_last_append_frees_its_session(
    kit: Kit, pod: Pod, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, message: str
) -> None:
    """A reply's last step frees the session in its own append: no transaction of its own after it. A turn that
    ends otherwise (here the model's error) is freed by its end, as before."""
    released: list[str] = []
    release = ActiveTurnStore.release

    async def counted(self: ActiveTurnStore, session_id: uuid.UUID, turn_id: str) -> bool:
        released.append(turn_id)
        return await release(self, session_id, turn_id)

    monkeypatch.setattr(ActiveTurnStore, "release", counted)
    session = await kit.session()

    chunks = await pod.reply(session, message)

    assert chunks[-1]["type"] == "finish"
    assert await ActiveTurnStore(pool).holder(session.id) is None
    assert await pod.active.current(session.id) is None
    assert len(released) == (1 if "error" in message else 0)


async def test_a_resend_follows_the_same_turn(kit: Kit, pod: Pod, stored_rows: StoredRows) -> None:
    session = await kit.session()
    first = await pod.reply(session, "[[mock:text tokens=5]]", client_id="m1")
    again = await pod.reply(session, "[[mock:text tokens=5]]", client_id="m1")
    assert again == first
    assert [r[0] for r in await stored_rows(session.id)] == ["user", "assistant"]


async def test_a_resend_of_a_finished_turn_leaves_the_session_free(kit: Kit, pod: Pod, stored_rows: StoredRows) -> None:
    """The look for the earlier turn shares its round trip with the claim of the session, so a resend of a message
    whose turn has ended claims the free session on the way: it gives the claim back, and the next message starts
    at once (under `reject` a pointer left behind would refuse it)."""
    session = await kit.session()
    first = await pod.reply(session, "[[mock:text tokens=5]]", client_id="m1")

    again = await pod.admission.submit(
        session, "alice", UserMessage("[[mock:text tokens=5]]", client_message_id="m1"), is_authenticated=True
    )

    assert again.repeated and await pod.active.current(session.id) is None
    assert await pod.reply(session, "[[mock:text tokens=5]]", client_id="m2") != first
    assert [r[0] for r in await stored_rows(session.id)] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("record", ["not a hash", {"session_id": "s"}], ids=["refused", "unreadable"])
async def test_a_failed_look_up_gives_the_claim_back(kit: Kit, pod: Pod, redis: Redis, record: object) -> None:
    """The claim and the look-up are one batch; when the look-up fails (Redis refuses it, or the record it finds
    cannot be read) the claim made beside it is given back."""
    session = await kit.session()
    turn_id = turn_id_for(session.id, "m1")
    if isinstance(record, dict):
        await redis.hset(keys.turn_meta(turn_id), mapping=record)  # no status: the record cannot be read
    else:
        await redis.set(keys.turn_meta(turn_id), str(record))  # HGETALL answers WRONGTYPE

    with pytest.raises((ResponseError, KeyError)):
        await pod.admission.submit(session, "alice", UserMessage("hi", client_message_id="m1"), is_authenticated=True)

    assert await pod.active.current(session.id) is None
    await redis.delete(keys.turn_meta(turn_id))
    assert (await pod.reply(session, "[[mock:text tokens=5]]", client_id="m1"))[-1]["type"] == "finish"


async def test_reject_refuses_a_message_while_a_reply_runs(kit: Kit, pod: Pod) -> None:
    session = await kit.session()
    running = await pod.admission.submit(
        session, "alice", UserMessage("[[mock:text tokens=100 delay_ms=20]]"), is_authenticated=True
    )
    with pytest.raises(Conflict) as refused:
        await pod.admission.submit(session, "alice", UserMessage("and now?"), is_authenticated=True)
    assert refused.value.details == {"active_task_id": running.turn_id}


@pytest.mark.parametrize("pod", ["enqueue"], indirect=True)
async def test_enqueue_waits_for_the_running_reply(kit: Kit, pod: Pod, stored_rows: StoredRows) -> None:
    session = await kit.session()
    first = await pod.admission.submit(
        session, "alice", UserMessage("[[mock:text tokens=30 delay_ms=10]]"), is_authenticated=True
    )

    second = await pod.reply(session, "[[mock:text content=second]]")

    info = await pod.registry.info(first.turn_id)
    assert info is not None and info.status == "completed" and second[-1]["type"] == "finish"
    assert [r[0] for r in await stored_rows(session.id)] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("pod", ["enqueue"], indirect=True)
async def test_a_message_waiting_for_a_dead_owners_turn_closes_it(kit: Kit, pod: Pod, stored_rows: StoredRows) -> None:
    session = await kit.session(("user", "an earlier question"))
    ghost = await ghost_turn(pod, session)

    chunks = await pod.reply(session, "[[mock:text content=answered]]")

    assert chunks[-1]["type"] == "finish"
    info = await pod.registry.info(ghost)
    assert info is not None and info.status == "interrupted"
    rows = await stored_rows(session.id)
    assert [(role, content) for role, content, _, _ in rows] == [
        ("user", "an earlier question"),
        ("assistant", "[interrupted]"),  # what the dead owner's stream held
        ("user", "[[mock:text content=answered]]"),
        ("assistant", "answered"),
    ]


async def test_cancel_stops_a_turn_of_this_pod_and_frees_the_session(kit: Kit, pod: Pod) -> None:
    session = await kit.session()
    running = await pod.admission.submit(
        session, "alice", UserMessage("[[mock:text tokens=500 delay_ms=10]]"), is_authenticated=True
    )
    await asyncio.sleep(0.2)

    assert await pod.admission.cancel(session.id) == running.turn_id

    assert await pod.active.current(session.id) is None
    info = await pod.registry.info(running.turn_id)
    assert info is not None and info.status == "cancelled"


async def test_cancel_closes_a_turn_whose_owner_is_gone(kit: Kit, pod: Pod) -> None:
    session = await kit.session(("user", "hi"))
    ghost = await ghost_turn(pod, session)

    assert await pod.admission.cancel(session.id) == ghost

    assert await pod.active.current(session.id) is None  # freed within the stop wait, by this pod
    info = await pod.registry.info(ghost)
    assert info is not None and info.status == "interrupted"


async def test_a_stop_requested_from_another_pod_reaches_the_turn(kit: Kit, pod: Pod) -> None:
    session = await kit.session()
    running = await pod.admission.submit(
        session, "alice", UserMessage("[[mock:text tokens=500 delay_ms=10]]"), is_authenticated=True
    )

    await pod.registry.request_cancel(running.turn_id)  # what `cancel` does on a pod that does not run it
    await asyncio.wait_for(pod.driver.wait(running.turn_id), 5)

    info = await pod.registry.info(running.turn_id)
    assert info is not None and info.status == "cancelled"
