"""The operator's bad day, as a drill: two pods on a PostgreSQL of their own, 50 streaming turns, Postgres stopped for
`DRILL_OUTAGE_SECONDS` (default 10) one moment into them. Not part of the suite (its name does not start with
`test_`: it takes the outage plus about 20 s); run it explicitly:

    DRILL_OUTAGE_SECONDS=60 .venv/bin/pytest tests/chat/outage_drill.py -s

It prints how the clients' streams ended and when every reply was stored, and fails unless every reply is stored
exactly once, equal to what its client received, with no session left holding an unanswered user message.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from backend import keys
from backend.devtools.mock_llm import MockLLMServer
from tests.own_postgres import OwnPostgres
from tests.sse import chunks
from tests.streams.test_durable_turns import ALICE, Reader, body_of, kinds, new_session, pod_env, read, two_pods

OUTAGE_SECONDS = float(os.environ.get("DRILL_OUTAGE_SECONDS", "10"))
TURNS = 50
MESSAGE = "[[mock:text tokens=200 delay_ms=25]]"  # five seconds of streaming


def how_it_ended(reader: Reader) -> str:
    k = kinds(reader.frames)
    end = "normal end" if k[-2:] == ["finish", "[DONE]"] and "error" not in k else f"error end {k[-4:]}"
    kept = any(c["type"] == "data-storage" for c in chunks(body_of(reader.frames)))
    return end + (", kept for later" if kept else "")


async def replies(pg: OwnPostgres) -> dict[str, list[tuple[str, str | None]]]:
    conn = await asyncpg.connect(pg.dsn)
    try:
        rows = await conn.fetch("SELECT session_id, role, content FROM chat_messages ORDER BY session_id, sequence")
    finally:
        await conn.close()
    stored: dict[str, list[tuple[str, str | None]]] = {}
    for row in rows:
        stored.setdefault(str(row["session_id"]), []).append((row["role"], row["content"]))
    return stored


async def test_drill(redis: Redis, mock_llm: MockLLMServer, tmp_path: Path) -> None:
    async with OwnPostgres() as pg:
        env = {**pod_env(mock_llm), "DATABASE_URL": pg.dsn, "COPILOT_TURN_LEASE_SECONDS": "30"}
        async with two_pods(env, tmp_path) as (a, b):
            pods = [a, b]
            sids = [await new_session(pods[i % 2].client) for i in range(TURNS)]
            readers = [
                read(
                    pods[i % 2].client,
                    "POST",
                    f"/api/chat/sessions/{sid}/stream",
                    json={"message": MESSAGE},
                    headers=ALICE,
                )
                for i, sid in enumerate(sids)
            ]
            for reader in readers:
                await reader.wait_for_text(3)
            stopped = time.monotonic()
            await pg.stop()
            await asyncio.sleep(OUTAGE_SECONDS)
            await pg.start()
            back = time.monotonic() - stopped
            await asyncio.gather(*(reader.done(within=OUTAGE_SECONDS + 120) for reader in readers))
            ends: dict[str, int] = {}
            for reader in readers:
                ends[how_it_ended(reader)] = ends.get(how_it_ended(reader), 0) + 1
            last_end = max(reader.ended_at or 0.0 for reader in readers) - stopped

            deadline = time.monotonic() + 60
            while True:
                stored = await replies(pg)
                unanswered = [s for s in sids if not stored.get(s) or stored[s][-1][0] != "assistant"]
                if not unanswered or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            all_stored = time.monotonic() - stopped

    exact = [
        s for s, r in zip(sids, readers, strict=True) if stored.get(s) == [("user", MESSAGE), ("assistant", r.text())]
    ]
    print(
        f"\nPostgres stopped {OUTAGE_SECONDS:g}s (back {back:.1f}s after the stop); client ends: {ends}, the last "
        f"{last_end:.1f}s after the stop; every reply stored {all_stored:.1f}s after the stop; stored once and equal "
        f"to what the client received: {len(exact)}/{TURNS}; unanswered: {len(unanswered)}; "
        f"sessions still pending: {await redis.zcard(keys.PENDING_SESSIONS)}"
    )
    assert len(exact) == TURNS and not unanswered
