"""SIGTERM on `copilot serve` with replies streaming: the pod drains the way an orchestrator expects.

Readiness turns 503 and new turns are refused (503 with `Retry-After`) at once, while the server keeps serving
follows of running turns; a reply that finishes within the grace period ends normally; one that does not is
stopped when it ends, stored with `[interrupted]`, and its stream ends cleanly; then the process exits, well
before an orchestrator's 30 s kill.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from backend.devtools.mock_llm import MockLLMServer
from tests.helpers import free_port
from tests.sse import chunks
from tests.streams.test_durable_turns import (
    ALICE,
    INTERRUPTED,
    Pod,
    assert_well_formed,
    body_of,
    kinds,
    new_session,
    pod_env,
    read,
    send,
    stored,
    wait_ready,
)

GRACE_SECONDS = 2.0


async def start_serve(env: dict[str, str], log_path: Path) -> Pod:
    """`copilot serve` in a process of its own, the way a container runs it."""
    port = free_port()
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)),
        cwd=log_path.parent,  # not the checkout: no stray .env is read
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()  # the child has its own descriptor
    return Pod("serve", f"http://127.0.0.1:{port}", process, log_path)


async def test_sigterm_drains_running_replies_then_exits(
    db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    """Regression: on SIGTERM readiness never turned 503 and nothing refused new turns; uvicorn stopped accepting
    connections and waited for every streaming reply to finish (30 s and more), so an orchestrator killed the pod,
    replies and all."""
    env = {**pod_env(mock_llm), "COPILOT_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS), "COPILOT_LOG_LEVEL": "INFO"}
    log_path = tmp_path / "serve.log"
    pod = await start_serve(env, log_path)
    try:
        await wait_ready(pod)
        long_sid, short_sid, late_sid = [await new_session(pod.client) for _ in range(3)]
        long_message = "[[mock:text tokens=600 delay_ms=20]]"  # 12 s: longer than the grace
        long = send(pod, long_sid, long_message)
        short = send(pod, short_sid, "[[mock:text tokens=40 delay_ms=20]]")  # under 1 s: within the grace
        await long.wait_for_text()
        await short.wait_for_text(2)

        pod.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        ready = await pod.client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert time.monotonic() - signalled < 1.0
        refused = await pod.client.post(f"/api/chat/sessions/{late_sid}/stream", json={"message": "hi"}, headers=ALICE)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert refused.headers["retry-after"] == "1"
        # Following a running reply keeps working while the pod drains.
        assert long.task_id is not None
        follower = read(pod.client, "GET", f"/api/chat/tasks/{long.task_id}/stream", headers=ALICE)

        await short.done(within=10)
        await long.done(within=15)
        await follower.done(within=15)
        code = await asyncio.wait_for(pod.process.wait(), 30)
        exited = time.monotonic()
    finally:
        pod.kill()
        await pod.process.wait()
        await pod.client.aclose()
        print(f"--- {log_path.name} ---\n{log_path.read_text()[-5000:]}")  # shown when the test fails

    assert code == 0
    assert exited - signalled < GRACE_SECONDS + 10  # far below the 30 s after which an orchestrator kills

    # The reply that finished within the grace period ended normally and is stored whole.
    assert kinds(short.frames)[-2:] == ["finish", "[DONE]"] and "error" not in kinds(short.frames)
    assert chunks(body_of(short.frames))[-1]["finishReason"] == "stop"
    assert len(short.text().split()) == 40

    # The one that did not was stopped after the grace period, its stream ended cleanly with an interrupted finish.
    assert long.ended_at is not None and long.ended_at - signalled >= GRACE_SECONDS - 0.2
    assert kinds(long.frames)[-3:] == ["error", "finish", "[DONE]"]
    assert "shutting down" in chunks(body_of(long.frames))[-2]["errorText"]
    assert chunks(body_of(long.frames))[-1]["finishReason"] == "error"
    assert_well_formed(long.frames)
    assert 0 < len(long.text().split()) < 600
    assert follower.status == 200 and follower.frames == long.frames

    assert await stored(db, long_sid) == [("user", long_message), ("assistant", long.text() + INTERRUPTED)]
    assert (await stored(db, short_sid))[-1] == ("assistant", short.text())
    assert await stored(db, late_sid) == []  # the refused message was not stored
