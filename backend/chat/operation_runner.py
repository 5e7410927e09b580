"""Long-running tools: start them without holding up the turn, run or delegate the work, and continue the
conversation when the result arrives, on whichever pod receives it.

1. `start` (in the turn): take the lease lock for this session, tool and arguments (held → `operation_in_progress`,
   nothing runs twice) in Redis, then record the operation in Postgres, whose partial unique index is the lock's
   truth; open its task stream; the model gets `operation_started` and the turn ends without waiting. The step
   stores the tool call with an `operation_pending` result.
2. `launch` (once the step is stored): run the tool in the background, renewing the lock. A tool that hands the
   work to an external service returns `{"status": "accepted"}`; the service later calls the webhook.
3. Every result, in-process or external, goes through the completions stream to `complete` (any pod): claim the
   operation (a duplicate changes nothing), put the result in place of the pending message, start the
   continuation turn on the operation's task stream, settle the operation, release the lock.

The record, its claim, its settlement and its deadline live in Postgres, so a Redis flush loses no operation: the
webhook still finds it, the completion still lands, and one that never finishes is still failed at its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from backend import keys
from backend.cancellation import check_cancelled
from backend.chat.tokens import TokenCounter
from backend.store.operations import Operation, OperationStore
from backend.store.sessions import SessionStore
from backend.streams.completions import Completion, publish
from backend.streams.limits import StreamLimits
from backend.streams.operation_locks import OperationLocks, arguments_digest
from backend.streams.turns import TurnRegistry
from backend.tools.base import Tool, ToolContext, ToolOutcome, run_tool
from backend.tools.delegation import Delegation

log = logging.getLogger("copilot.operations")

Continue = Callable[[Operation], Awaitable[None]]


class InProgress(RuntimeError):
    """Another consumer is completing this operation right now."""


@dataclass(frozen=True, slots=True)
class Started:
    outcome: ToolOutcome
    """What the model and the UI get now (`operation_started` or `operation_in_progress`)."""
    stored: str
    """What the step stores as the tool's result until the operation completes."""
    launch: Callable[[], None] | None
    """Starts the work; call it once the step is stored (None when nothing is to run)."""


class OperationRunner:
    def __init__(
        self,
        *,
        redis: Redis,
        operations: OperationStore,
        locks: OperationLocks,
        registry: TurnRegistry,
        store: SessionStore,
        counter: TokenCounter,
        lock_seconds: float,
        delegated_timeout_seconds: float,
        stale_claim_seconds: float,
        limits: StreamLimits | None = None,
    ) -> None:
        self._redis = redis
        self._ops = operations
        self._locks = locks
        self._registry = registry
        self._store = store
        self._counter = counter
        self._lock_seconds = lock_seconds
        self._delegated_timeout = delegated_timeout_seconds
        self._stale_claim = stale_claim_seconds
        self._limits = limits or StreamLimits()
        self._continue: Continue | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> OperationStore:
        return self._ops

    def set_continuation(self, continuation: Continue) -> None:
        """How a completed operation's conversation goes on (the turn runner's `continue_operation`)."""
        self._continue = continuation

    # --- 1. in the turn ------------------------------------------------------------------------------
    async def start(self, tool: Tool[Any], arguments: dict[str, Any], ctx: ToolContext) -> Started:
        operation_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
        digest = arguments_digest(arguments)
        lock_key = keys.operation_lock(ctx.session_id, tool.name, digest)
        if not await self._locks.lock(lock_key, operation_id, ttl_seconds=self._lock_seconds):
            running = await self._locks.holder(lock_key)
            existing = await self._ops.get(running) if running else None
            return _in_progress(tool, running, existing.task_id if existing else None)
        op = Operation(operation_id, ctx.session_id, ctx.user_id, ctx.tool_call_id, tool.name, digest, task_id)
        try:
            holder = await self._ops.create(
                op, deadline_seconds=tool.timeout_seconds + self._lock_seconds, lock_seconds=self._lock_seconds
            )
        except BaseException:
            await self._locks.release_lock(lock_key, operation_id)
            raise
        if holder is not None:
            # Redis had forgotten the lock (flushed or restarted); Postgres had not.
            await self._locks.release_lock(lock_key, operation_id)
            return _in_progress(tool, holder.operation_id, holder.task_id)
        await self._registry.create(task_id, str(ctx.session_id), ctx.user_id, lease=False)
        message = f"{tool.name} started; this can take a while. The result will appear here when it is ready."
        output = {"type": "operation_started", "message": message, "operation_id": operation_id, "task_id": task_id}
        stored = {"type": "operation_pending", "message": message, "operation_id": operation_id, "task_id": task_id}
        delegation = Delegation(self._redis, operation_id=operation_id, task_id=task_id, max_len=self._limits.jobs)
        work_ctx = replace(ctx, extra={**ctx.extra, "delegation": delegation})
        return Started(
            ToolOutcome(True, output, None, 0.0),
            _json(stored),
            lambda: self._spawn(self._work(op, tool, arguments, work_ctx)),
        )

    # --- 2. the work ---------------------------------------------------------------------------------
    async def _work(self, op: Operation, tool: Tool[Any], arguments: dict[str, Any], ctx: ToolContext) -> None:
        renewer = asyncio.create_task(self._renew(op))
        try:
            outcome = await run_tool(tool, tool.name, arguments, ctx)
            if outcome.ok and isinstance(outcome.output, dict) and outcome.output.get("status") == "accepted":
                # Delegated: the external service calls the webhook; the lock and the deadline cover the wait.
                # Both only move if the operation is still open: a fast service's completion may be done already.
                await self._ops.delegate(op.operation_id, seconds=self._delegated_timeout)
                await self._renew_fast_path(op, self._delegated_timeout)
                return
            await publish(
                self._redis,
                Completion(op.operation_id, outcome.ok, outcome.output if outcome.ok else None, outcome.error_text),
                max_len=self._limits.completions,
            )
        except Exception:
            log.exception("operation %s could not report its result; its deadline will fail it", op.operation_id)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)  # no renewal lands after the work ended

    async def _renew(self, op: Operation) -> None:
        while True:
            check_cancelled()  # a redis-py call may have swallowed our cancellation: never renew forever
            await asyncio.sleep(self._lock_seconds / 3)
            try:
                await self._ops.renew_lock(op.operation_id, seconds=self._lock_seconds)
            except Exception:
                log.warning("operation %s: its lock could not be renewed; trying again", op.operation_id, exc_info=True)
            await self._renew_fast_path(op, self._lock_seconds)

    async def _renew_fast_path(self, op: Operation, seconds: float) -> None:
        """Redis only mirrors the lock in Postgres: a failure here costs the shortcut, never the operation."""
        try:
            await self._locks.renew_lock(_lock_key(op), op.operation_id, ttl_seconds=seconds)
        except RedisError:
            log.warning("operation %s: the lock's fast path could not be renewed", op.operation_id)

    # --- 3. the result -------------------------------------------------------------------------------
    async def complete(self, completion: Completion) -> None:
        """Handle a completion (the consumer's handler). Idempotent per operation id."""
        op = await self._ops.get(completion.operation_id)
        if op is None:
            log.warning("completion for unknown operation %s dropped", completion.operation_id)
            return
        claim = await self._ops.claim(op.operation_id, stale_after_seconds=self._stale_claim)
        if claim == "completing":
            # Another consumer is on it; keep the entry pending: if that consumer dies, this one takes over later.
            raise InProgress(op.operation_id)
        if claim != "claimed":
            log.info("operation %s: completion ignored (%s)", op.operation_id, claim)
            return
        if completion.success:
            content = _json(completion.result if completion.result is not None else {"status": "completed"})
        else:
            error = completion.error or "the operation failed"
            content = _json({"error": {"type": "operation_failed", "message": error}})
        token_count = self._counter.count_message({"role": "tool", "content": content})
        if (
            await self._store.replace_tool_result(op.session_id, op.tool_call_id, content, token_count=token_count)
            is None
        ):
            raise LookupError(f"operation {op.operation_id}: no pending tool message to replace")  # retried later
        if self._continue is not None:
            await self._continue(op)
        await self._ops.settle(op.operation_id, "completed" if completion.success else "failed")
        await self._locks.release_lock(_lock_key(op), op.operation_id)

    async def fail_overdue(self) -> None:
        """Fail operations past their deadline (the pod running them died, or the service never called back)."""
        for operation_id in await self._ops.overdue():
            overdue = Completion(operation_id, False, None, "the operation did not finish in time")
            await publish(self._redis, overdue, max_len=self._limits.completions)
            await self._ops.postpone(operation_id, seconds=self._stale_claim)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _in_progress(tool: Tool[Any], operation_id: str | None, task_id: str | None) -> Started:
    output = {
        "type": "operation_in_progress",
        "message": f"{tool.name} is already running with these arguments; its result will follow.",
        "operation_id": operation_id,
        "task_id": task_id,
    }
    return Started(ToolOutcome(True, output, None, 0.0), _json(output), None)


def _lock_key(op: Operation) -> str:
    return keys.operation_lock(op.session_id, op.tool_name, op.arguments_digest)


def _json(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
