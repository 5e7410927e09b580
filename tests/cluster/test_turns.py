"""Durable turns and operations on the scale-out topology: every request goes through HAProxy to one of three pods,
which share a Redis Cluster and reach PostgreSQL through PgBouncer in transaction mode. Each test makes the pods
that matter differ (HAProxy names the one that answered) and checks what was stored, directly in PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import asyncpg
import httpx
import orjson

from backend.devtools.report_worker import WorkerConfig, ensure_group, process_available, webhook
from backend.redis_client import open_redis
from tests.chaos.scenario import text_turn
from tests.cluster.client import ClusterClient, Stream
from tests.cluster.conftest import WEBHOOK_SECRET
from tests.protocol_check import check_body
from tests.sse import chunks, text_of

REPORT = '[[mock:tool name=generate_report args={"topic": "cats"}]]'


async def stored(db: asyncpg.Connection, session_id: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT role, coalesce(content, '') AS content FROM chat_messages WHERE session_id = $1 ORDER BY sequence",
        uuid.UUID(session_id),
    )
    return [(r["role"], r["content"]) for r in rows]


async def after(client: ClusterClient, pod: str | None) -> None:
    """Make HAProxy's next pick another pod than `pod`: round robin goes on from the pod that served the last request,
    so ask (read-only) until `pod` answers."""
    for _ in range(6):
        r = await client.http.get("/api/info")
        if r.headers.get("x-served-by") == pod:
            return
    raise AssertionError(f"{pod} never answered through the balancer")


async def wait_until_free(client: ClusterClient, session_id: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while (await client.session(session_id))["active_task"] is not None:
        assert time.monotonic() < deadline, "the session still has a running turn"
        await asyncio.sleep(0.1)


async def test_a_turn_through_the_balancer_is_streamed_whole_and_stored_once(
    client: ClusterClient, db: asyncpg.Connection
) -> None:
    sid = await client.new_session()
    message, reply = text_turn("t1", 30, 5)
    stream = await client.turn(sid, message)
    assert stream.response.status_code == 200
    assert check_body(stream.body) == []
    assert text_of(stream.body) == reply
    await wait_until_free(client, sid)
    assert await stored(db, sid) == [("user", message), ("assistant", reply)]


async def test_consecutive_requests_land_on_every_pod(client: ClusterClient) -> None:
    served = [(await client.http.get("/api/info")).headers.get("x-served-by") for _ in range(6)]
    assert set(served) == {"pod-1", "pod-2", "pod-3"}
    assert all(a != b for a, b in itertools.pairwise(served))  # round robin: never twice in a row


async def test_the_balancer_passes_each_chunk_on_as_it_comes(client: ClusterClient) -> None:
    # HAProxy's default hands small response writes to the kernel with MSG_MORE, which holds them up to 200 ms waiting
    # for more: every token of a reply arrived that late, in bursts. The same reply's tokens, read through the
    # balancer and straight from a pod at the same time, must arrive together (tokens 400 ms apart: a hold would show
    # as ~200 ms on every one of them).
    message = "[[mock:text tokens=5 delay_ms=400]]"
    sessions = [await client.new_session() for _ in range(2)]
    direct = httpx.AsyncClient(base_url=client.topology.pod_url(0), headers=client.http.headers, timeout=30)

    async def arrivals(http: httpx.AsyncClient, session_id: str) -> list[float]:
        start = time.perf_counter()
        times = []
        body = {"message": message, "client_message_id": uuid.uuid4().hex}
        async with http.stream("POST", f"/api/chat/sessions/{session_id}/stream", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:") and '"text-delta"' in line:
                    times.append(time.perf_counter() - start)
        return times

    async with direct:
        through, straight = await asyncio.gather(arrivals(client.http, sessions[0]), arrivals(direct, sessions[1]))
    assert len(through) == len(straight) == 5
    late = sorted(b - a for a, b in zip(straight, through, strict=True))
    assert late[2] < 0.1, f"through the balancer each token came later by (s): {late}"


async def test_a_reconnect_lands_on_another_pod_and_goes_on_after_its_cursor(
    client: ClusterClient, db: asyncpg.Connection
) -> None:
    sid = await client.new_session()
    message, reply = text_turn("rc", 60, 30)
    async with client.send(sid, message) as first:
        await first.read(until=8)
    assert first.task_id and first.last_id
    await after(client, first.pod)
    async with client.resume(first.task_id, after=first.last_id) as resumed:
        await resumed.read()
    assert resumed.response.status_code == 200
    assert resumed.pod != first.pod
    ids = [f.id for f in resumed.frames if f.id]
    assert first.last_id not in ids  # nothing the client had is sent again
    seen = text_of(first.body[: first.body.rindex(b"\n\n") + 2]) + text_of(resumed.body)
    assert seen == reply
    last = chunks(resumed.body)[-1]
    assert (last["type"], last["finishReason"]) == ("finish", "stop")
    await wait_until_free(client, sid)
    assert await stored(db, sid) == [("user", message), ("assistant", reply)]


async def test_cancel_sent_to_another_pod_stops_the_turn_within_a_second(
    client: ClusterClient, db: asyncpg.Connection
) -> None:
    sid = await client.new_session()
    message, reply = text_turn("cx", 300, 30)  # 9 s if nobody stops it
    async with client.send(sid, message) as stream:
        await stream.read(until=5)
        await after(client, stream.pod)
        cancel = await client.http.post(f"/api/chat/sessions/{sid}/cancel")
        cancelled_at = time.monotonic()
        assert cancel.status_code == 200, cancel.text
        assert cancel.headers["x-served-by"] != stream.pod
        await stream.read()
    ended_in = time.monotonic() - cancelled_at
    assert ended_in < 1.5, f"the stream ended {ended_in:.2f}s after the cancel"
    assert [c["type"] for c in chunks(stream.body)][-2:] == ["abort", "finish"]
    await wait_until_free(client, sid)
    rows = await stored(db, sid)
    assert [role for role, _ in rows] == ["user", "assistant"]
    assert reply.startswith(rows[1][1].removesuffix("[interrupted]").rstrip())  # what it said, kept once


async def test_a_second_message_is_refused_by_whichever_pod_gets_it_and_a_resend_joins_the_turn(
    client: ClusterClient, db: asyncpg.Connection
) -> None:
    sid = await client.new_session()
    message, reply = text_turn("dt", 40, 30)
    client_message_id = uuid.uuid4().hex
    async with client.send(sid, message, client_message_id=client_message_id) as first:
        await first.read(until=3)
        await after(client, first.pod)
        second = await client.http.post(f"/api/chat/sessions/{sid}/stream", json={"message": "and another thing"})
        assert second.status_code == 409
        assert second.headers["x-served-by"] != first.pod
        assert first.task_id in second.text  # the refusal names the running turn
        # The same message sent again (a retry after a lost connection) joins the running turn on yet another pod.
        async with client.send(sid, message, client_message_id=client_message_id) as again:
            await again.read()
        assert again.pod not in (first.pod, second.headers["x-served-by"])
        assert again.task_id == first.task_id
        assert text_of(again.body) == reply
        await first.read()
    await wait_until_free(client, sid)
    assert await stored(db, sid) == [("user", message), ("assistant", reply)]


async def test_a_follower_on_another_pod_sees_the_running_reply_from_its_start(client: ClusterClient) -> None:
    sid = await client.new_session()
    message, reply = text_turn("fw", 40, 30)
    async with client.send(sid, message) as sender:
        await sender.read(until=6)
        assert sender.task_id
        active = await client.session(sid)
        assert active["active_task"]["task_id"] == sender.task_id  # what the panel polls for
        await after(client, sender.pod)
        async with client.resume(sender.task_id) as follower:  # no cursor: from `start`, as the panel follows
            await follower.read()
        await sender.read()
    assert follower.pod != sender.pod
    assert chunks(follower.body)[0]["type"] == "start"
    assert text_of(follower.body) == text_of(sender.body) == reply


async def test_a_webhook_completion_is_consumed_by_some_pod_and_continues_the_conversation(
    client: ClusterClient, db: asyncpg.Connection
) -> None:
    sid = await client.new_session()
    stream = await client.turn(sid, REPORT)
    [started] = [c["output"] for c in chunks(stream.body) if c["type"] == "tool-output-available"]
    assert started["type"] == "operation_started", started
    await wait_until_free(client, sid)

    follower_task = asyncio.create_task(_follow(client, started["task_id"]))
    # The external service: reads its job from the cluster, posts the signed webhook to the balancer.
    worker_redis = open_redis(client.topology.redis_url, cluster=True)
    try:
        await ensure_group(worker_redis)  # type: ignore[arg-type]
        config = WorkerConfig(client.topology.url, WEBHOOK_SECRET, work_seconds=0, block_seconds=0.5)
        async with httpx.AsyncClient(timeout=30) as http:
            deadline = time.monotonic() + 15
            accepted = 0
            while accepted == 0:
                assert time.monotonic() < deadline, "the job never reached the worker"
                accepted = await process_available(worker_redis, webhook(http, config), config)  # type: ignore[arg-type]
    finally:
        await worker_redis.aclose()
    async with asyncio.timeout(20):
        continuation = await follower_task
    assert check_body(continuation.body) == []
    assert text_of(continuation.body)
    deadline = time.monotonic() + 10
    while (status := await _operation_status(db, started["operation_id"])) not in ("completed", "failed"):
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    assert status == "completed"
    rows = await stored(db, sid)
    assert [role for role, _ in rows] == ["user", "assistant", "tool", "assistant", "assistant"]
    assert orjson.loads(rows[2][1])["type"] != "operation_pending"  # the pending message holds the result now


async def _follow(client: ClusterClient, task_id: str) -> Stream:
    async with client.resume(task_id) as stream:
        await stream.read()
    return stream


async def _operation_status(db: asyncpg.Connection, operation_id: str) -> str:
    return str(await db.fetchval("SELECT status FROM chat_operations WHERE id = $1", operation_id))


async def test_a_long_session_is_summarised_once_on_the_cluster(client: ClusterClient, db: asyncpg.Connection) -> None:
    sid = await client.new_session()
    for i in range(5):  # 10 live messages, above the topology's bound of 8
        stream = await client.turn(sid, f"turn {i} [[mock:text tokens=20]]")
        assert stream.response.status_code == 200
        await wait_until_free(client, sid)
    deadline = time.monotonic() + 15
    while not (through := await db.fetchval("SELECT summary_through FROM chat_sessions WHERE id = $1", uuid.UUID(sid))):
        assert time.monotonic() < deadline, "the session was never summarised"
        await asyncio.sleep(0.2)
    assert through > 0
    stream = await client.turn(sid, "and now? [[mock:text tokens=5]]")
    assert check_body(stream.body) == []
