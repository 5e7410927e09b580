"""Handing work to an external service (`backend/tools/delegation.py`): the job on a bounded Redis Stream."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from backend import keys
from backend.tools.delegation import ACCEPTED, Delegation


async def test_submit_appends_a_job_with_the_operation_and_answers_accepted(redis: Redis) -> None:
    delegation = Delegation(redis, operation_id="op-1", task_id="task-1", max_len=100)
    assert await delegation.submit("report", {"topic": "cats"}) == ACCEPTED
    [(_, fields)] = await redis.xrange(keys.jobs("report"))
    assert orjson.loads(fields[b"job"]) == {"operation_id": "op-1", "task_id": "task-1", "payload": {"topic": "cats"}}


async def test_a_jobs_stream_stays_within_its_bound(redis: Redis) -> None:
    for i in range(1_000):
        await Delegation(redis, operation_id=f"op-{i}", task_id="t", max_len=100).submit("report", {"i": i})
    config: Any = await redis.config_get("stream-node-max-entries")
    assert 100 <= await redis.xlen(keys.jobs("report")) <= 100 + int(config["stream-node-max-entries"])
    last: Any = await redis.xrevrange(keys.jobs("report"), count=1)
    assert orjson.loads(last[0][1][b"job"])["operation_id"] == "op-999"
