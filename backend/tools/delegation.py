"""Handing a long-running operation to an external service.

A long-running tool gets a `Delegation` in `ctx.extra["delegation"]`. `await delegation.submit(kind, payload)`
appends a job to the Redis Stream `copilot:jobs:<kind>`, carrying the operation id; the tool then returns
`ACCEPTED`, and the service that consumes those jobs reports the result later through the signed webhook
(`POST /api/chat/operations/{operation_id}/complete`) or `backend.streams.completions.publish`.

The webhook (v2, see docs/api.md) signs `<timestamp>.<delivery id>.<operation id>.<body>`: a service signs each
result for the operation id of its job, with a delivery id of its own that it keeps when it retries the same
delivery (`backend.webhooks.signed_headers`; the example is `backend/devtools/report_worker.py`).

A jobs stream keeps about `max_len` newest jobs (`XADD MAXLEN ~`): a job pushed out before a service read it is
lost, and its operation fails at its deadline.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from backend import keys

ACCEPTED: dict[str, Any] = {"status": "accepted"}
"""What a tool returns once it has handed its work to an external service."""


class Delegation:
    def __init__(self, redis: Redis, *, operation_id: str, task_id: str, max_len: int) -> None:
        self._redis = redis
        self._max_len = max_len
        self.operation_id = operation_id
        self.task_id = task_id

    async def submit(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        job = {"operation_id": self.operation_id, "task_id": self.task_id, "payload": payload}
        await self._redis.xadd(keys.jobs(kind), {"job": orjson.dumps(job)}, maxlen=self._max_len, approximate=True)
        return dict(ACCEPTED)
