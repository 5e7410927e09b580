"""Handing a long-running operation to an external service.

A long-running tool gets a `Delegation` in `ctx.extra["delegation"]`. `await delegation.submit(kind, payload)`
appends a job to the Redis Stream `copilot:jobs:<kind>`, carrying the operation id; the tool then returns
`ACCEPTED`, and the service that consumes those jobs reports the result later through the signed webhook
(`POST /api/chat/operations/{operation_id}/complete`) or `backend.streams.completions.publish`.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from backend import keys

ACCEPTED: dict[str, Any] = {"status": "accepted"}
"""What a tool returns once it has handed its work to an external service."""


class Delegation:
    def __init__(self, redis: Redis, *, operation_id: str, task_id: str) -> None:
        self._redis = redis
        self.operation_id = operation_id
        self.task_id = task_id

    async def submit(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        job = {"operation_id": self.operation_id, "task_id": self.task_id, "payload": payload}
        await self._redis.xadd(keys.jobs(kind), {"job": orjson.dumps(job)})
        return dict(ACCEPTED)
