"""Long-running tools end to end (`backend/chat/operation_runner.py`, the webhook, the completions consumer): real HTTP,
Postgres, Redis and the mock model; one in-process server, or two server processes where it matters.

DESIGN.md invariants 6 (locks are leases) and 7 (webhooks are authenticated and idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from backend import keys, webhooks
from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from backend.devtools.report_worker import WorkerConfig, ensure_group, process_available, webhook, write_report
from backend.runtime import Runtime
from backend.streams.active import ActiveTurns
from tests.api.test_chat_stream import ALICE, assert_well_formed, new_session, send, stored, turn_calls
from tests.chat.long_tools import FailingJob, GatedDelegation, SlowEcho
from tests.conftest import LiveServer, auth
from tests.helpers import wait_for
from tests.redis_server import private_redis
from tests.sse import chunks, read_stream, text_of, types
from tests.streams.test_durable_turns import Pod, pod_env, two_pods

SECRET = "webhook-secret-for-the-tests"
REPORT = '[[mock:tool name=generate_report args={"topic": "cats"}]]'
BOB = auth("bob")


@pytest.fixture
def op_settings(chat_settings: Settings) -> Settings:
    return chat_settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "tools": ["tests.chat.long_tools:registry"],
            "operation_lock_seconds": 1.0,
            "completion_reclaim_idle_seconds": 0.5,
            "heartbeat_seconds": 0.5,
        }
    )


@pytest.fixture
async def ops(op_settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, LiveServer]]:
    async with LiveServer(op_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


def runtime_of(live: LiveServer) -> Runtime:
    runtime: Runtime = live.app.state.runtime
    return runtime


# --- helpers --------------------------------------------------------------------------------------------------


def tool_output(body: bytes) -> dict[str, Any]:
    [output] = [c["output"] for c in chunks(body) if c["type"] == "tool-output-available"]
    assert isinstance(output, dict)
    return output


async def start_operation(client: httpx.AsyncClient, sid: str, message: str) -> dict[str, Any]:
    """Send `message` (a long-running tool call); the turn ends at once with `operation_started`."""
    response, body = await send(client, sid, message)
    assert response.status_code == 200
    assert_well_formed(body)
    assert types(body)[-1] == "finish" and body.endswith(b"data: [DONE]\n\n")
    started = tool_output(body)
    assert started["type"] == "operation_started", started
    assert started["task_id"] != response.headers["x-copilot-task-id"]  # the continuation has a stream of its own
    return started


def follow(client: httpx.AsyncClient, task_id: str) -> asyncio.Task[tuple[httpx.Response, bytes]]:
    """A client (re)connecting to an operation's task stream, in the background."""
    return asyncio.create_task(read_stream(client, "GET", f"/api/chat/tasks/{task_id}/stream", headers=ALICE))


async def continuation(follower: asyncio.Task[tuple[httpx.Response, bytes]]) -> bytes:
    async with asyncio.timeout(20):
        response, body = await follower
    assert response.status_code == 200
    assert_well_formed(body)
    seq = types(body)
    assert seq[0] == "start" and seq[-1] == "finish" and "text-delta" in seq
    assert chunks(body)[-1]["finishReason"] == "stop"
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: [DONE]") == 1
    return body


async def operation(db: asyncpg.Connection, operation_id: str) -> dict[str, Any]:
    """The operation's row in Postgres, with the key of its lock's fast path in Redis."""
    row = await db.fetchrow("SELECT * FROM chat_operations WHERE id = $1", operation_id)
    assert row is not None, operation_id
    return {**row, "lock_key": keys.operation_lock(row["session_id"], row["tool_name"], row["arguments_digest"])}


async def tool_message(db: asyncpg.Connection, sid: str) -> Any:
    rows = [r for r in await stored(db, sid) if r["role"] == "tool"]
    return orjson.loads(rows[0]["content"])


async def replies(db: asyncpg.Connection, sid: str) -> int:
    """Assistant messages that are text replies (not tool calls)."""
    return sum(r["role"] == "assistant" and not r["tool_calls"] for r in await stored(db, sid))


async def settled(db: asyncpg.Connection, operation_id: str) -> bool:
    return (await operation(db, operation_id))["status"] in ("completed", "failed")


async def drained(redis: Redis) -> bool:
    """Every completion was handed out and acknowledged."""
    groups: Any = await redis.xinfo_groups(keys.COMPLETIONS)
    last: Any = await redis.xrevrange(keys.COMPLETIONS, count=1)
    return bool(groups) and groups[0]["pending"] == 0 and (not last or groups[0]["last-delivered-id"] == last[0][0])


async def jobs(redis: Redis, kind: str = "report") -> list[dict[str, Any]]:
    found: Any = await redis.xrange(keys.jobs(kind))
    return [orjson.loads(fields[b"job"]) for _, fields in found]


def delivery(
    operation_id: str, payload: Any, *, secret: str = SECRET, now: float | None = None, delivery_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A signed webhook delivery for `operation_id`: its body and headers, as a service sends them."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return body, webhooks.signed_headers(secret, operation_id, body, delivery_id=delivery_id, now=now)


def webhook_url(operation_id: str) -> str:
    return f"/api/chat/operations/{operation_id}/complete"


async def post_webhook(
    client: httpx.AsyncClient,
    operation_id: str,
    payload: Any,
    *,
    secret: str = SECRET,
    now: float | None = None,
    delivery_id: str | None = None,
) -> httpx.Response:
    body, headers = delivery(operation_id, payload, secret=secret, now=now, delivery_id=delivery_id)
    return await client.post(webhook_url(operation_id), content=body, headers=headers)


async def run_worker(redis: Redis, api_url: str) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        config = WorkerConfig(api_url, SECRET, work_seconds=0, block_seconds=0.5)
        await ensure_group(redis)
        return await process_available(redis, webhook(http, config), config)


# --- the delegated path -------------------------------------------------------------------------------------


async def test_delegated_report_end_to_end(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    client, live = ops
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    op_id, task_id = started["operation_id"], started["task_id"]

    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    call = rows[1]["tool_calls"][0]
    assert call["function"]["name"] == "generate_report" and rows[2]["tool_call_id"] == call["id"]
    pending = orjson.loads(rows[2]["content"])
    assert pending["type"] == "operation_pending"
    assert (pending["operation_id"], pending["task_id"]) == (op_id, task_id)
    assert op_id in rows[3]["content"]  # the model was told it runs in the background (and said so)

    op = await operation(db, op_id)
    assert op["status"] == "pending" and op["tool_call_id"] == call["id"] and op["task_id"] == task_id
    await wait_for(lambda: _has_jobs(redis, 1))  # the job goes out once the step is stored
    [job] = await jobs(redis)
    assert job == {"operation_id": op_id, "task_id": task_id, "payload": {"topic": "cats", "sections": 3}}
    await wait_for(lambda: _lock_is(redis, op["lock_key"], op_id))

    follower = follow(client, task_id)  # a client waiting for the result
    await asyncio.sleep(0.3)
    assert not follower.done()
    model_calls = len(turn_calls(mock_llm))
    assert await run_worker(redis, live.url) == 1  # writes the report, calls the signed webhook

    body = await continuation(follower)
    assert chunks(body)[0]["messageMetadata"] == {"taskId": task_id}
    report = write_report("cats", 3)
    await wait_for(lambda: _replies(db, sid, 2))
    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant", "assistant"]
    assert orjson.loads(rows[2]["content"]) == report  # the pending message now holds the result
    assert rows[4]["content"] == text_of(body)

    [request] = turn_calls(mock_llm)[model_calls:]  # one continuation call
    messages = request["messages"]
    tool = next(m for m in messages if m["role"] == "tool")
    assert orjson.loads(tool["content"]) == report
    assert messages[-1]["role"] == "user"
    assert messages[-1]["content"].startswith(f'<operation_finished tool="generate_report" operation_id="{op_id}">')

    await wait_for(lambda: settled(db, op_id))
    assert (await operation(db, op_id))["status"] == "completed"
    assert not await redis.exists(op["lock_key"])  # released after success
    assert (await operation(db, op_id))["settled_at"] is not None  # no deadline any more
    replay = await continuation(follow(client, task_id))  # the finished stream replays whole
    assert text_of(replay) == text_of(body)


async def _has_jobs(redis: Redis, n: int, kind: str = "report") -> bool:
    return int(await redis.xlen(keys.jobs(kind))) >= n


async def _lock_is(redis: Redis, lock_key: str, holder: str) -> bool:
    return await redis.get(lock_key) == holder.encode()


async def _replies(db: asyncpg.Connection, sid: str, n: int) -> bool:
    return await replies(db, sid) >= n


async def test_the_result_reaches_a_client_that_connects_after_it_arrived(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis
) -> None:
    client, live = ops
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    await wait_for(lambda: _has_jobs(redis, 1))
    assert await run_worker(redis, live.url) == 1
    await wait_for(lambda: settled(db, started["operation_id"]))
    await wait_for(lambda: _replies(db, sid, 2))
    body = await continuation(follow(client, started["task_id"]))  # nobody watched it live
    assert (await stored(db, sid))[-1]["content"] == text_of(body)


# --- in-process long-running tools --------------------------------------------------------------------------


async def test_in_process_tool_result_continues_the_conversation(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    client, live = ops
    tool = runtime_of(live).tools.get("slow_echo")
    assert isinstance(tool, SlowEcho)
    sid = await new_session(client)
    began = time.monotonic()
    started = await start_operation(client, sid, '[[mock:tool name=slow_echo args={"text": "hello", "seconds": 1}]]')
    assert time.monotonic() - began < 1.0  # the turn did not wait for the tool
    op = await operation(db, started["operation_id"])
    assert op["status"] == "pending"
    assert await redis.get(op["lock_key"]) == started["operation_id"].encode()

    body = await continuation(follow(client, started["task_id"]))
    assert tool.calls == ["hello"]
    await wait_for(lambda: _replies(db, sid, 2))
    assert await tool_message(db, sid) == {"echo": "hello"}
    assert (await stored(db, sid))[-1]["content"] == text_of(body)
    continuation_request = turn_calls(mock_llm)[-1]["messages"]
    assert any(m["role"] == "tool" and orjson.loads(m["content"]) == {"echo": "hello"} for m in continuation_request)
    await wait_for(lambda: settled(db, started["operation_id"]))
    assert (await operation(db, started["operation_id"]))["status"] == "completed"
    assert not await redis.exists(op["lock_key"])  # released after success


async def test_a_failing_tool_stores_a_structured_error_and_still_continues(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    client, live = ops
    tool = runtime_of(live).tools.get("failing_job")
    assert isinstance(tool, FailingJob)
    sid = await new_session(client)
    started = await start_operation(client, sid, '[[mock:tool name=failing_job args={"text": "x", "seconds": 0.2}]]')
    op = await operation(db, started["operation_id"])

    body = await continuation(follow(client, started["task_id"]))
    await wait_for(lambda: _replies(db, sid, 2))
    error = {"error": {"type": "operation_failed", "message": "the job for 'x' broke"}}
    assert await tool_message(db, sid) == error
    assert (await stored(db, sid))[-1]["content"] == text_of(body)
    assert any(m["role"] == "tool" and "operation_failed" in m["content"] for m in turn_calls(mock_llm)[-1]["messages"])
    await wait_for(lambda: settled(db, started["operation_id"]))
    assert (await operation(db, started["operation_id"]))["status"] == "failed"
    assert not await redis.exists(op["lock_key"])  # released after failure
    assert tool.calls == ["x"]


# --- no double start ----------------------------------------------------------------------------------------


async def test_resend_and_refresh_during_a_delegated_operation_do_not_start_it_twice(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis
) -> None:
    client, live = ops
    sid = await new_session(client)
    first, first_body = await send(client, sid, REPORT, client_message_id="m-1")
    started = tool_output(first_body)
    assert started["type"] == "operation_started"
    await wait_for(lambda: _has_jobs(redis, 1))

    # A refresh re-posts the same message: the same turn, nothing runs again.
    again, again_body = await send(client, sid, REPORT, client_message_id="m-1")
    assert again.headers["x-copilot-task-id"] == first.headers["x-copilot-task-id"]
    assert chunks(again_body) == chunks(first_body)

    # A resend (a new message leading the model to the same call) finds the operation running.
    _, body = await send(client, sid, REPORT)
    assert_well_formed(body)
    in_progress = tool_output(body)
    assert in_progress["type"] == "operation_in_progress"
    assert (in_progress["operation_id"], in_progress["task_id"]) == (started["operation_id"], started["task_id"])
    await asyncio.sleep(0.3)
    assert len(await jobs(redis)) == 1  # one job for the worker

    assert await run_worker(redis, live.url) == 1
    await continuation(follow(client, started["task_id"]))
    await wait_for(lambda: _replies(db, sid, 3))
    rows = await stored(db, sid)
    tools = [orjson.loads(r["content"]) for r in rows if r["role"] == "tool"]
    assert tools[0] == write_report("cats", 3)  # the first call got the report
    assert tools[1]["type"] == "operation_in_progress"  # the second one pointed at it
    assert [r["role"] for r in rows].count("user") == 2


async def test_resend_during_an_in_process_operation_runs_the_tool_once(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis
) -> None:
    client, live = ops
    tool = runtime_of(live).tools.get("slow_echo")
    assert isinstance(tool, SlowEcho)
    sid = await new_session(client)
    message = '[[mock:tool name=slow_echo args={"text": "once", "seconds": 1.5}]]'
    started = await start_operation(client, sid, message)
    _, body = await send(client, sid, message)
    assert tool_output(body)["type"] == "operation_in_progress"
    await continuation(follow(client, started["task_id"]))
    await wait_for(lambda: settled(db, started["operation_id"]))
    assert tool.calls == ["once"]

    # Once it is over, the same call starts a new operation.
    again = await start_operation(client, sid, message)
    assert again["operation_id"] != started["operation_id"]
    await continuation(follow(client, again["task_id"]))
    assert tool.calls == ["once", "once"]


# --- the webhook ----------------------------------------------------------------------------------------------


async def test_webhook_accepts_a_signed_completion_once(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    client, _ = ops
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    op_id = started["operation_id"]
    await wait_for(lambda: _has_jobs(redis, 1))
    follower = follow(client, started["task_id"])
    payload = {"success": True, "result": {"summary": "cats are great"}}

    response = await post_webhook(client, op_id, payload, delivery_id="first-delivery")
    assert response.status_code == 202
    assert response.json() == {"operation_id": op_id, "status": "accepted"}
    await continuation(follower)
    await wait_for(lambda: settled(db, op_id))
    await wait_for(lambda: _replies(db, sid, 2))
    rows_before, calls_before = await stored(db, sid), len(turn_calls(mock_llm))

    # The service retries the same delivery (a fresh timestamp and signature, the same delivery id): a duplicate.
    retried = await post_webhook(client, op_id, payload, delivery_id="first-delivery")
    assert retried.status_code == 200
    assert retried.json() == {"operation_id": op_id, "status": "duplicate"}
    # New deliveries, one with another outcome: enqueued, and ignored by the consumer (the operation is settled).
    assert (await post_webhook(client, op_id, payload)).status_code == 202
    assert (await post_webhook(client, op_id, {"success": False, "error": "late"})).status_code == 202
    assert int(await redis.xlen(keys.COMPLETIONS)) == 3
    await wait_for(lambda: drained(redis))
    await asyncio.sleep(0.3)
    assert await stored(db, sid) == rows_before  # no second update, no second continuation
    assert await tool_message(db, sid) == {"summary": "cats are great"}
    assert len(turn_calls(mock_llm)) == calls_before
    assert (await operation(db, op_id))["status"] == "completed"
    assert await redis.xlen(keys.COMPLETIONS_DEAD) == 0


async def test_webhook_refuses_bad_requests(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis
) -> None:
    client, live = ops
    sid = await new_session(client)
    op_id = (await start_operation(client, sid, REPORT))["operation_id"]
    url = webhook_url(op_id)
    payload = {"success": True, "result": "r"}
    body, headers = delivery(op_id, payload)
    tolerance = runtime_of(live).settings.webhook_tolerance_seconds

    async def refused(response: httpx.Response, code: str = "unauthorized") -> int:
        assert response.json()["error"]["code"] == code, response.text
        return response.status_code

    # unsigned
    assert await refused(await client.post(url, content=body)) == 401
    # v1: HMAC over `timestamp.body`, no delivery id; the answer says what v2 expects
    timestamp = headers[webhooks.TIMESTAMP_HEADER]
    v1 = "sha256=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    v1_headers = {webhooks.TIMESTAMP_HEADER: timestamp, webhooks.SIGNATURE_HEADER: v1}
    response = await client.post(url, content=body, headers=v1_headers)
    assert await refused(response) == 401
    assert "X-Copilot-Delivery" in response.json()["error"]["message"]
    assert "<timestamp>.<delivery>.<operation_id>.<body>" in response.json()["error"]["message"]
    # badly signed: another secret; each signed part tampered with on its own
    assert await refused(await post_webhook(client, op_id, payload, secret="not-the-secret")) == 401
    tampered_body = orjson.dumps({"success": True, "result": "forged"})
    assert await refused(await client.post(url, content=tampered_body, headers=headers)) == 401
    moved = {**headers, webhooks.TIMESTAMP_HEADER: str(int(timestamp) - 1)}
    assert await refused(await client.post(url, content=body, headers=moved)) == 401
    redelivered = {**headers, webhooks.DELIVERY_HEADER: headers[webhooks.DELIVERY_HEADER] + "0"}
    assert await refused(await client.post(url, content=body, headers=redelivered)) == 401
    assert await refused(await client.post(webhook_url(str(uuid.uuid4())), content=body, headers=headers)) == 401
    for malformed in ("has.dot", "x" * 129, "with space"):
        bad = {**headers, webhooks.DELIVERY_HEADER: malformed}
        assert await refused(await client.post(url, content=body, headers=bad)) == 401
    # replayed: a genuine request captured and sent again after the replay window
    old = time.time() - tolerance - 5
    assert await refused(await post_webhook(client, op_id, payload, now=old)) == 401
    # the signature is checked first: a bad one tells nothing about the operation or the body
    assert await refused(await post_webhook(client, str(uuid.uuid4()), b"{", secret="nope")) == 401
    # unknown operation, validly signed; ids no operation can have
    assert await refused(await post_webhook(client, str(uuid.uuid4()), payload), "not_found") == 404
    assert await refused(await post_webhook(client, "x" * 65, payload), "not_found") == 404
    assert await refused(await client.post(webhook_url("a.b"), content=body, headers=headers), "not_found") == 404
    # invalid bodies, validly signed
    for invalid in (b"not json", b"{}", b'{"success": false}', b'{"success": true, "extra": 1}', b"[]"):
        assert await refused(await post_webhook(client, op_id, invalid), "bad_request") == 400, invalid

    assert await redis.xlen(keys.COMPLETIONS) == 0  # nothing was enqueued
    assert await redis.keys(keys.webhook_delivery("*")) == []  # no delivery id of a refused request was recorded
    assert (await operation(db, op_id))["status"] == "pending"
    assert (await tool_message(db, sid))["type"] == "operation_pending"
    # The genuine delivery still goes through: nothing above used it up.
    assert (await client.post(url, content=body, headers=headers)).status_code == 202


async def test_a_delivery_redirected_to_another_users_operation_is_refused(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    """Regression: the signature covered `timestamp.body` only, so a delivery captured on its way to Alice's
    operation, re-posted to the URL of Bob's pending one, was accepted and replaced Bob's pending tool result."""
    client, _ = ops
    alice_sid = await new_session(client)
    alice = await start_operation(client, alice_sid, REPORT)
    bob_sid = await new_session(client, headers=BOB)
    _, bob_body = await read_stream(
        client, "POST", f"/api/chat/sessions/{bob_sid}/stream", json={"message": REPORT}, headers=BOB
    )
    bob = tool_output(bob_body)
    assert bob["type"] == "operation_started"
    await wait_for(lambda: _has_jobs(redis, 2))
    bob_pending = await tool_message(db, bob_sid)
    calls_before = len(turn_calls(mock_llm))

    body, headers = delivery(alice["operation_id"], {"success": True, "result": {"for": "alice"}})
    redirected = await client.post(webhook_url(bob["operation_id"]), content=body, headers=headers)
    assert redirected.status_code == 401
    assert redirected.json()["error"]["code"] == "unauthorized"
    assert await redis.xlen(keys.COMPLETIONS) == 0

    # Alice's own delivery goes through; Bob's operation stays as it was.
    assert (await client.post(webhook_url(alice["operation_id"]), content=body, headers=headers)).status_code == 202
    await continuation(follow(client, alice["task_id"]))
    await wait_for(lambda: settled(db, alice["operation_id"]))
    await wait_for(lambda: drained(redis))
    await asyncio.sleep(0.3)
    assert await tool_message(db, alice_sid) == {"for": "alice"}
    assert await tool_message(db, bob_sid) == bob_pending
    assert bob_pending["type"] == "operation_pending"
    assert (await operation(db, bob["operation_id"]))["status"] == "pending"
    assert await replies(db, bob_sid) == 1  # no continuation for Bob
    assert len(turn_calls(mock_llm)) == calls_before + 1  # Alice's continuation only


async def test_one_delivery_sent_500_times_is_enqueued_once(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    """Regression: a captured delivery re-sent 500 times was accepted 500 times and grew the completions stream by
    500 entries. Sent in concurrent bursts, so the duplicate check is raced too."""
    client, _ = ops
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    op_id = started["operation_id"]
    await wait_for(lambda: _has_jobs(redis, 1))
    calls_before = len(turn_calls(mock_llm))
    body, headers = delivery(op_id, {"success": True, "result": {"once": True}})

    statuses: list[int] = []
    for _ in range(10):
        burst = [client.post(webhook_url(op_id), content=body, headers=headers) for _ in range(50)]
        responses = await asyncio.gather(*burst)
        statuses += [r.status_code for r in responses]
        assert all(r.json()["status"] == ("accepted" if r.status_code == 202 else "duplicate") for r in responses)
    assert statuses.count(202) == 1 and statuses.count(200) == 499
    assert await redis.xlen(keys.COMPLETIONS) == 1

    await continuation(follow(client, started["task_id"]))
    await wait_for(lambda: settled(db, op_id))
    assert await tool_message(db, sid) == {"once": True}
    assert len(turn_calls(mock_llm)) == calls_before + 1
    ttl = await redis.pttl(keys.webhook_delivery(headers[webhooks.DELIVERY_HEADER]))
    tolerance = runtime_of(ops[1]).settings.webhook_tolerance_seconds
    assert 2 * tolerance * 1000 <= ttl <= (2 * tolerance + 60) * 1000  # remembered for two replay windows


async def test_the_completions_stream_stays_within_its_bound(
    op_settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    bound = 100
    settings = op_settings.model_copy(update={"completion_stream_max_len": bound})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        op_id = (await start_operation(client, sid, REPORT))["operation_id"]
        for i in range(300):  # distinct deliveries: each one is enqueued
            assert (await post_webhook(client, op_id, {"success": True, "result": i})).status_code == 202
        slack = await node_size(redis)
        assert bound <= await redis.xlen(keys.COMPLETIONS) <= bound + slack
        await wait_for(lambda: settled(db, op_id))
        assert await tool_message(db, sid) == 0  # the first one, handled before it could be trimmed


async def node_size(redis: Redis) -> int:
    """`stream-node-max-entries`: approximate trimming drops whole nodes, so a stream exceeds its bound by less."""
    config: Any = await redis.config_get("stream-node-max-entries")
    return int(config["stream-node-max-entries"])


async def test_webhook_answers_503_while_redis_is_unreachable(
    op_settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with private_redis(tmp_path) as server:
        settings = op_settings.model_copy(update={"redis_url": server.url})
        async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            sid = await new_session(client)
            op_id = (await start_operation(client, sid, REPORT))["operation_id"]
            payload = {"success": True, "result": "r"}
            await server.stop()
            try:
                # The operation is found in Postgres; recording the delivery needs Redis.
                response = await post_webhook(client, op_id, payload)
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "service_unavailable"
                # Refused before Redis is needed: still 401 / 400 / 404.
                assert (await post_webhook(client, op_id, payload, secret="nope")).status_code == 401
                assert (await post_webhook(client, op_id, b"{}")).status_code == 400
                assert (await post_webhook(client, str(uuid.uuid4()), payload)).status_code == 404
            finally:
                await server.start()
            assert (await post_webhook(client, op_id, payload)).status_code == 202  # back: the sender's retry lands


async def test_webhook_without_a_configured_secret_is_unavailable(
    chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, _ = chat
    response = await post_webhook(client, str(uuid.uuid4()), {"success": True})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"


async def test_a_fast_service_whose_webhook_beats_the_tool_changes_nothing_afterwards(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis
) -> None:
    """Regression: a delegated tool that returned `accepted` after its completion had been handled rewrote the
    operation as `pending` with a new deadline, so a duplicate webhook replaced the result and the deadline
    later failed an operation that had succeeded."""
    client, live = ops
    tool = runtime_of(live).tools.get("gated_delegation")
    assert isinstance(tool, GatedDelegation)
    sid = await new_session(client)
    started = await start_operation(client, sid, '[[mock:tool name=gated_delegation args={"text": "quick"}]]')
    op_id = started["operation_id"]
    await wait_for(lambda: _has_jobs(redis, 1, "gated"))  # the service has the job; the tool has not returned
    op = await operation(db, op_id)

    assert (await post_webhook(client, op_id, {"success": True, "result": {"v": 1}})).status_code == 202
    await continuation(follow(client, started["task_id"]))
    await wait_for(lambda: settled(db, op_id))
    assert not await redis.exists(op["lock_key"])

    tool.gate.set()  # now the tool returns `accepted`
    await asyncio.sleep(0.5)
    assert (await operation(db, op_id))["status"] == "completed"
    assert (await operation(db, op_id))["settled_at"] is not None  # no deadline any more
    assert not await redis.exists(op["lock_key"])
    assert (await post_webhook(client, op_id, {"success": True, "result": {"v": 2}})).status_code == 202
    await wait_for(lambda: drained(redis))
    await asyncio.sleep(0.3)
    assert await tool_message(db, sid) == {"v": 1}
    assert await replies(db, sid) == 2


# --- consumers and pods that die ------------------------------------------------------------------------------


async def test_a_completion_taken_by_a_pod_that_died_is_finished_by_another_once(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    client, live = ops
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    op_id = started["operation_id"]
    follower = follow(client, started["task_id"])
    calls_before = len(turn_calls(mock_llm))

    # A pod reads the completion and claims the operation, then dies before acknowledging anything. Reading in
    # the same transaction as the append keeps this server's consumer from getting the entry first.
    payload = orjson.dumps({"operation_id": op_id, "success": True, "result": {"from": "dead pod"}, "error": None})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.COMPLETIONS, {"completion": payload})
        pipe.xreadgroup(keys.COMPLETIONS_GROUP, "dead-pod", {keys.COMPLETIONS: ">"}, count=1)
        _, read = await pipe.execute()
    assert read and read[0][1][0][1][b"completion"] == payload
    assert await runtime_of(live).operations.store.claim(op_id, stale_after_seconds=60) == "claimed"

    await continuation(follower)  # after `reclaim_idle` the live pod takes it over
    await wait_for(lambda: settled(db, op_id))
    await wait_for(lambda: drained(redis))
    await asyncio.sleep(0.3)
    assert await tool_message(db, sid) == {"from": "dead pod"}
    assert await replies(db, sid) == 2
    assert len(turn_calls(mock_llm)) == calls_before + 1  # one continuation
    assert await redis.xlen(keys.COMPLETIONS_DEAD) == 0


async def test_a_crashed_operation_frees_its_lock_after_the_lease(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis
) -> None:
    client, live = ops
    runtime = runtime_of(live)
    tool = runtime.tools.get("slow_echo")
    assert isinstance(tool, SlowEcho)
    lease = runtime.settings.operation_lock_seconds
    sid = await new_session(client)
    message = '[[mock:tool name=slow_echo args={"text": "long", "seconds": 8}]]'
    started = await start_operation(client, sid, message)
    op = await operation(db, started["operation_id"])
    await asyncio.sleep(lease * 1.5)  # longer than the lease: it is being renewed
    assert await redis.get(op["lock_key"]) == started["operation_id"].encode()
    _, body = await send(client, sid, message)
    assert tool_output(body)["type"] == "operation_in_progress"

    await runtime.operations.close()  # the work dies with its pod: nothing releases the lock
    assert await redis.get(op["lock_key"]) == started["operation_id"].encode()
    await wait_for(lambda: _gone(redis, op["lock_key"]), within=lease * 2)

    again = await start_operation(client, sid, message)  # the lease ran out: the call can start again
    assert again["operation_id"] != started["operation_id"]
    assert tool.calls == ["long", "long"]


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_an_overdue_operation_is_failed_and_the_conversation_goes_on(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    client, live = ops
    runtime = runtime_of(live)
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)  # no worker ever answers
    op_id = started["operation_id"]
    await wait_for(lambda: _has_jobs(redis, 1))
    op = await operation(db, op_id)
    follower = follow(client, started["task_id"])

    await runtime.operations.store.postpone(op_id, seconds=-1)  # its deadline has passed
    await runtime.operations.fail_overdue()
    body = await continuation(follower)
    await wait_for(lambda: settled(db, op_id))
    error = {"error": {"type": "operation_failed", "message": "the operation did not finish in time"}}
    assert await tool_message(db, sid) == error
    await wait_for(lambda: _replies(db, sid, 2))
    assert (await stored(db, sid))[-1]["content"] == text_of(body)
    assert any(
        m["role"] == "tool" and "did not finish in time" in m["content"] for m in turn_calls(mock_llm)[-1]["messages"]
    )
    assert (await operation(db, op_id))["status"] == "failed"
    assert not await redis.exists(op["lock_key"])
    assert await runtime.operations.store.overdue() == []

    # The worker turns up late: its webhook is accepted and ignored.
    assert await run_worker(redis, live.url) == 1
    await wait_for(lambda: drained(redis))
    await asyncio.sleep(0.3)
    assert await tool_message(db, sid) == error
    assert await replies(db, sid) == 2


async def test_another_users_task_stream_is_not_found(
    ops: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, _ = ops
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    response = await client.get(f"/api/chat/tasks/{started['task_id']}/stream", headers=auth("mallory"))
    assert response.status_code == 404


# --- two server processes -----------------------------------------------------------------------------------


@pytest.fixture
async def pods(
    db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer, tmp_path: Path
) -> AsyncIterator[tuple[Pod, Pod]]:
    """Two server processes sharing Postgres, Redis, the mock model and the webhook secret (the pods of
    `tests/streams/test_durable_turns.py`, with `COPILOT_WEBHOOK_SECRET`)."""
    env = {**pod_env(mock_llm), "COPILOT_WEBHOOK_SECRET": SECRET, "COPILOT_HEARTBEAT_SECONDS": "0.5"}
    async with two_pods(env, tmp_path) as started:
        yield started


@pytest.mark.slow
async def test_result_and_continuation_reach_a_client_on_the_other_pod(
    pods: tuple[Pod, Pod], db: asyncpg.Connection, redis: Redis
) -> None:
    a, b = pods
    sid = await new_session(a.client)
    # The browser starts the turn on pod A and goes away as soon as the operation has started.
    first: list[dict[str, Any]] = []
    async with a.client.stream(
        "POST", f"/api/chat/sessions/{sid}/stream", json={"message": REPORT}, headers=ALICE
    ) as r:
        turn_id = r.headers["x-copilot-task-id"]
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                first.append(orjson.loads(line[6:]))
                if first[-1]["type"] == "tool-output-available":
                    break
    started = first[-1]["output"]
    assert started["type"] == "operation_started"

    # Closing the stream lost nothing: the turn finished, the job went out.
    _, turn = await read_stream(b.client, "GET", f"/api/chat/tasks/{turn_id}/stream", headers=ALICE)
    assert_well_formed(turn)
    assert [c for c in chunks(turn)][: len(first)] == first
    await wait_for(lambda: _has_jobs(redis, 1))

    follower = follow(b.client, started["task_id"])  # the browser comes back, on pod B
    assert await run_worker(redis, a.url) == 1  # the webhook goes to pod A
    body = await continuation(follower)
    await wait_for(lambda: _replies(db, sid, 2))
    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant", "assistant"]
    assert orjson.loads(rows[2]["content"]) == write_report("cats", 3)
    assert rows[-1]["content"] == text_of(body)
    await wait_for(lambda: settled(db, started["operation_id"]))
    op = await operation(db, started["operation_id"])
    assert op["status"] == "completed" and not await redis.exists(op["lock_key"])
    # Both pods replay the same continuation.
    assert chunks(await continuation(follow(a.client, started["task_id"]))) == chunks(body)


async def test_a_continuation_slower_than_reclaim_idle_runs_once(
    op_settings: Settings, db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    """Two pods; the session stays busy longer than `reclaim_idle`, so the second pod takes the completion over
    while the first still waits to continue. When the session frees up, one continuation runs, not two."""
    async with (
        LiveServer(op_settings) as one,
        LiveServer(op_settings),
        httpx.AsyncClient(base_url=one.url, timeout=30) as client,
    ):
        sid = await new_session(client)
        started = await start_operation(client, sid, REPORT)
        op_id = started["operation_id"]
        await wait_for(lambda: _has_jobs(redis, 1))
        active = ActiveTurns(redis, lease_seconds=60)
        assert await active.claim(uuid.UUID(sid), "a-long-turn")  # the user is busy with another reply
        calls_before = len(turn_calls(mock_llm))
        assert (await post_webhook(client, op_id, {"success": True, "result": {"v": 1}})).status_code == 202
        await asyncio.sleep(op_settings.completion_reclaim_idle_seconds * 6)
        pending: Any = await redis.xpending_range(keys.COMPLETIONS, keys.COMPLETIONS_GROUP, "-", "+", 10)
        # The second pod took it over; both now wait for the session.
        assert [p["times_delivered"] >= 2 for p in pending] == [True]
        assert await active.release(uuid.UUID(sid), "a-long-turn")
        await continuation(follow(client, started["task_id"]))
        await wait_for(lambda: settled(db, op_id))
        await asyncio.sleep(1.0)
        assert len(turn_calls(mock_llm)) == calls_before + 1
        assert await replies(db, sid) == 2


async def test_a_continuation_ended_by_another_pod_while_this_one_waited_is_not_run_again(
    ops: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer
) -> None:
    """Regression: `continue_operation` checked the task stream before waiting for the session; if another pod ran
    and ended the continuation meanwhile, it ran it a second time once the session was free."""
    client, live = ops
    runtime = runtime_of(live)
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    op = await runtime.operations.store.get(started["operation_id"])
    assert op is not None
    session_id = uuid.UUID(sid)
    assert await ActiveTurns(redis, lease_seconds=60).claim(session_id, "a-long-turn")
    calls_before = len(turn_calls(mock_llm))
    waiting = asyncio.create_task(runtime.admission.continue_operation(op))
    await asyncio.sleep(0.3)  # it has seen the task stream running and waits for the session
    assert not waiting.done()

    # Another pod runs the continuation and ends it, between two polls of this one.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.turn_meta(op.task_id), "status", "completed")
        pipe.delete(keys.active_turn(session_id))
        await pipe.execute()
    async with asyncio.timeout(5):
        await waiting
    await asyncio.sleep(0.3)
    assert len(turn_calls(mock_llm)) == calls_before
    assert await replies(db, sid) == 1
    assert not await redis.exists(keys.active_turn(session_id))  # the session is free again


async def test_the_lock_renewer_stops_even_when_a_redis_call_swallows_its_cancellation(
    redis: Redis, db: asyncpg.Connection, migrated_database: str
) -> None:
    """Regression (seen on CI): on Python 3.11 a cancellation that lands as a redis-py command completes can be
    dropped; the renewer then kept renewing the lock of an operation whose pod had closed it, forever."""
    from backend.chat.operation_runner import OperationRunner
    from backend.store.operations import Operation, OperationStore
    from backend.store.postgres import create_pool
    from backend.streams.operation_locks import OperationLocks

    renewals = 0
    renewing = asyncio.Event()

    class SwallowingLocks(OperationLocks):
        async def renew_lock(self, lock_key: str, operation_id: str, *, ttl_seconds: float) -> bool:
            nonlocal renewals
            renewals += 1
            renewing.set()
            with contextlib.suppress(asyncio.CancelledError):  # as `asyncio.wait_for` in redis-py can on 3.11
                await asyncio.sleep(0.05)
            return True

    pool = await create_pool(migrated_database, min_size=1, max_size=2)
    manager = OperationRunner(
        redis=redis,
        operations=OperationStore(pool),
        locks=SwallowingLocks(redis),
        registry=Any,  # type: ignore[arg-type]
        store=Any,  # type: ignore[arg-type]
        counter=Any,  # type: ignore[arg-type]
        lock_seconds=0.15,
        delegated_timeout_seconds=10,
        stale_claim_seconds=10,
    )
    op = Operation("op", uuid.uuid4(), "alice", "call", "slow_echo", "digest", "task")
    renewer = asyncio.create_task(manager._renew(op))
    try:
        await renewing.wait()
        renewer.cancel()  # lands while `renew_lock` runs, which swallows it
        await asyncio.wait([renewer], timeout=1)
        assert renewer.done()
        count = renewals
        await asyncio.sleep(0.2)
        assert renewals == count
    finally:
        renewer.cancel()
        await pool.close()
