"""How many Redis round trips one turn costs, counted through the real app on the real Redis.

Counting is not timing: every command and every pipeline the app sends passes the client's observer
(`open_redis(..., observe=...)`; a pipeline or a script call is one round trip). Only the work of the turn is
counted: the request's task, the turn's and its publisher's; the background loops (turn supervisor, completion
consumer, reconciler) were running before the request and are left out.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import backend.runtime as runtime_module
from backend import keys
from backend.config import Settings
from backend.runtime import Runtime
from tests.conftest import LiveServer, auth
from tests.sse import read_stream, text_of

ALICE = auth("alice")
ONE_STEP_TURN_ROUND_TRIPS = 5
"""A plain one-step turn (no tools, title set); issue 17 asked for at most 6."""
ADMISSION_ROUND_TRIPS = 3
"""Of these, the request's own before the turn runs: the session read, the claim (with the look for an earlier turn
of the message, when it names one) and the user message's cache update (with the turn's stream opened)."""
WITH_DEFAULT_LIMITS_ROUND_TRIPS = 8
"""The same turn with the per-user limits at their defaults: the request's rate check, the slot taken (with the day's
tokens checked) and the model tokens counted; the slot goes back in the end's round trip."""


class RoundTrips:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.tasks: list[str] = []
        """The name of the task of each call."""
        self.ignored: set[asyncio.Task[Any]] = set()

    def observe(self, name: str, seconds: float, failed: bool) -> None:
        task = asyncio.current_task()
        if task is not None and task not in self.ignored:
            self.calls.append(name)
            self.tasks.append(task.get_name())

    @property
    def admission(self) -> list[str]:
        """The calls of the request itself, the first task to call (not of the turn's tasks, nor the pod's writer)."""
        return [call for call, task in zip(self.calls, self.tasks, strict=True) if task == self.tasks[0]]

    def start_counting(self) -> None:
        """From now on, count only tasks started from now on (requests, turns, publishers)."""
        self.ignored = set(asyncio.all_tasks())
        self.calls.clear()
        self.tasks.clear()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    counter = RoundTrips()
    real_open = runtime_module.open_redis

    def observed_open(url: str, *, cluster: bool, observe: Any = None) -> Any:
        return real_open(url, cluster=cluster, observe=counter.observe)

    monkeypatch.setattr(runtime_module, "open_redis", observed_open)
    return counter


async def _one_turn(client: httpx.AsyncClient, live: LiveServer, sid: str, counter: RoundTrips, **body: Any) -> str:
    counter.start_counting()
    response, raw = await read_stream(
        client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": "hi", **body}, headers=ALICE
    )
    assert response.status_code == 200
    runtime: Runtime = live.app.state.runtime
    await runtime.driver.wait(response.headers["x-copilot-task-id"])  # the turn ends after its last chunk is sent
    return text_of(raw)


@pytest.mark.parametrize(
    ("body", "bound"),
    [
        ({}, ONE_STEP_TURN_ROUND_TRIPS),
        # A client message id names the turn a resend joins (useChat names every message): that turn is looked up
        # in the claim's round trip.
        ({"client_message_id": "m-1"}, ONE_STEP_TURN_ROUND_TRIPS),
    ],
    ids=["plain", "with-client-message-id"],
)
async def test_round_trips_of_a_one_step_turn(
    chat_settings: Settings, round_trips: RoundTrips, redis: Redis, body: dict[str, Any], bound: int
) -> None:
    # Default publish window: the turn's chunks reach Redis in one write besides the end.
    settings = chat_settings.model_copy(update={"publish_window_ms": 250.0})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=ALICE)
        sid = r.json()["id"]
        await _one_turn(client, live, sid, round_trips)  # a first turn: the session's cache is warm after it
        text = await _one_turn(client, live, sid, round_trips, **body)
    assert text
    # Session read, claim (with the pending-writes check), user message's cache update (with the turn's stream
    # opened and its history read), one publish, the end (with the reply's cache update, the lease and the pointer).
    assert len(round_trips.calls) <= bound, round_trips.calls
    assert len(round_trips.admission) == ADMISSION_ROUND_TRIPS, round_trips.admission
    # The reply reached the session's cache with the end: the cached list ends with it, the cached row counts it.
    cached = [orjson.loads(m) for m in await redis.lrange(keys.session_messages(uuid.UUID(sid)), 1, -1)]
    assert [(m["role"], m["content"]) for m in cached][-2:] == [("user", "hi"), ("assistant", text)]
    row = orjson.loads(await redis.get(keys.session_meta(uuid.UUID(sid))))
    assert row["message_count"] == len(cached) == 4


async def test_round_trips_of_a_one_step_turn_with_the_default_limits(
    chat_settings: Settings, round_trips: RoundTrips, redis: Redis
) -> None:
    defaults = Settings.model_fields
    limits = {
        name: defaults[name].default
        for name in ("rate_limit_requests_per_minute", "rate_limit_concurrent_turns", "rate_limit_tokens_per_day")
    }
    assert all(limits.values())  # the limits are on by default
    settings = chat_settings.model_copy(update={"publish_window_ms": 250.0, **limits})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=ALICE)
        sid = r.json()["id"]
        await _one_turn(client, live, sid, round_trips)
        assert await _one_turn(client, live, sid, round_trips)
    assert len(round_trips.calls) <= WITH_DEFAULT_LIMITS_ROUND_TRIPS, round_trips.calls
    assert await redis.zcard(keys.user_turns("alice")) == 0  # the slot went back


async def test_turns_streaming_at_once_on_one_pod_share_their_writes(
    chat_settings: Settings, round_trips: RoundTrips, redis: Redis
) -> None:
    """The chunks of every turn running on a pod go to Redis in one pipeline per window, not one write per turn per
    window: at 100 streams that was 100 round trips per window, most of Redis' traffic per token."""
    settings = chat_settings.model_copy(update={"publish_window_ms": 250.0})
    turns, windows = 10, 6  # each reply streams for ~1.2 s: ~5 windows of 250 ms
    message = "[[mock:text tokens=40 delay_ms=30]]"
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sids = []
        for _ in range(turns):
            r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=ALICE)
            sids.append(r.json()["id"])
        await asyncio.gather(*(_one_turn(client, live, sid, RoundTrips()) for sid in sids))  # caches warm
        round_trips.start_counting()
        texts = await asyncio.gather(*(_streamed(client, live, sid, message) for sid in sids))
    assert all(len(text.split()) == 40 for text in texts)
    # Each turn's own round trips (at most 6, one of them its first publish), and the shared writes of the windows.
    assert len(round_trips.calls) <= turns * ONE_STEP_TURN_ROUND_TRIPS + windows, round_trips.calls


async def _streamed(client: httpx.AsyncClient, live: LiveServer, sid: str, message: str) -> str:
    response, raw = await read_stream(
        client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=ALICE
    )
    assert response.status_code == 200
    await live.app.state.runtime.driver.wait(response.headers["x-copilot-task-id"])
    return text_of(raw)


async def test_an_end_redis_did_not_take_leaves_no_stale_cached_list(
    chat_settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step's cache update rides with the end: when that round trip fails, the cached list is dropped
    instead of lacking the reply, and a read finds the reply in Postgres."""
    async with LiveServer(chat_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=ALICE)
        sid = r.json()["id"]
        runtime: Runtime = live.app.state.runtime

        async def unreachable(*args: Any, **kwargs: Any) -> bool:
            raise RedisConnectionError("Redis went away")

        monkeypatch.setattr(runtime.turn_registry, "finish", unreachable)
        response, _ = await read_stream(
            client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": "hi"}, headers=ALICE
        )
        with pytest.raises(RedisConnectionError):  # the turn's task ends with the error, as any failed end did
            await runtime.driver.wait(response.headers["x-copilot-task-id"])
        assert not await redis.exists(keys.session_messages(uuid.UUID(sid)))
        messages = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
