"""The example external service of `generate_report`: takes report jobs from Redis, writes the report, and
reports back through the signed webhook (v2). `scripts/report_worker.py` runs it.

What a worker of this kind has to get right, in a few lines each:
- Jobs are read in a consumer group, so several workers share them, and a job is acknowledged only once the API
  answered 2xx (accepted, or a duplicate of a delivery that did arrive) or 404 (it does not know the operation).
  Otherwise the job stays pending and is sent again next round with the same delivery id.
- An idle queue is an empty read, not an error: the read blocks for `block_seconds`, well below the client's
  socket timeout (a read that blocks as long as the timeout fails with a TimeoutError).
- A lost Redis (restart, network) is retried with a growing pause, and a job group lost with its data is created
  again; the worker carries on once Redis is back.
- `stop` (SIGINT or SIGTERM under `main`) ends the loop once the round in hand is done.

`in_process` runs the same loop inside `copilot serve` when no model is configured (the demo), so the long-running
flow works with no second process: it hands each completion straight to the completions stream, where the webhook
would have put it, instead of calling the webhook (which needs a secret the demo has not got).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from backend import keys, webhooks
from backend.config import Settings
from backend.streams.completions import Completion, publish_delivery

log = logging.getLogger("copilot.report_worker")
GROUP = "report-workers"
STREAM = keys.jobs("report")
SOCKET_TIMEOUT_SECONDS = 10.0
"""The Redis client's socket timeout: every read, blocking ones included, must return well before it."""
FIRST_PAUSE_SECONDS, LONGEST_PAUSE_SECONDS = 0.5, 10.0
"""Pauses between attempts while Redis is unreachable: doubled after each failure, up to the longest."""


Delivered = Literal["accepted", "acknowledged", "retry"]
"""What came of handing a completion over: `accepted` (enqueued), `acknowledged` (nothing to enqueue: a duplicate,
or an operation the API does not know; the job is done either way) or `retry` (sent again next round)."""

Deliver = Callable[[str, bytes, str], Awaitable[Delivered]]
"""`deliver(operation_id, body, delivery_id)`: hand a finished job's completion body to the API."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    api_url: str
    """Base URL of the copilot-chat API (for the webhook; unused in process)."""
    secret: str
    """The API's COPILOT_WEBHOOK_SECRET (for the webhook; unused in process)."""
    work_seconds: float = 5.0
    """How long writing one report takes (the example only pretends to work)."""
    consumer: str = "worker"
    """This worker's name in the group; keep it across restarts so the jobs it had pending are retried."""
    block_seconds: float = 2.0
    """Longest wait for a new job in one read."""

    def __post_init__(self) -> None:
        if not 0 < self.block_seconds <= SOCKET_TIMEOUT_SECONDS / 2:
            raise ValueError(f"block_seconds must be within (0, {SOCKET_TIMEOUT_SECONDS / 2}]")


def write_report(topic: str, sections: int) -> dict[str, Any]:
    parts = [
        {"heading": f"{i}. {title} of {topic}", "text": f"Findings about {topic}, part {i} of {sections}."}
        for i, title in enumerate(["Overview", "Details", "Risks", "Options", "Next steps"] * 2, start=1)
    ][:sections]
    return {"type": "report", "topic": topic, "sections": parts}


def connect(redis_url: str) -> Redis:
    return Redis.from_url(redis_url, socket_timeout=SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=5)


async def ensure_group(redis: Redis) -> None:
    try:
        await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


async def process_available(redis: Redis, deliver: Deliver, config: WorkerConfig) -> int:
    """One round: send again the jobs this worker has not finished, then take new ones (waiting up to
    `block_seconds` for one). Returns how many completions the API accepted."""
    accepted = 0
    for start, block in (("0", None), (">", int(config.block_seconds * 1000))):
        reply: Any = await redis.xreadgroup(GROUP, config.consumer, {STREAM: start}, count=10, block=block)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                accepted += await _handle(redis, deliver, config, entry_id, fields)
    return accepted


async def _handle(
    redis: Redis, deliver: Deliver, config: WorkerConfig, entry_id: bytes, fields: dict[bytes, bytes]
) -> bool:
    try:
        job = orjson.loads(fields[b"job"])
        operation_id, topic, sections = job["operation_id"], job["payload"]["topic"], int(job["payload"]["sections"])
    except (KeyError, TypeError, ValueError):  # also a job trimmed from the stream before it was read (no fields)
        log.error("job %s is not a report job; dropped", entry_id.decode())
        await redis.xack(STREAM, GROUP, entry_id)
        return False
    await asyncio.sleep(config.work_seconds)
    body = orjson.dumps({"success": True, "result": write_report(topic, sections)})
    # One delivery id per job, the same on every retry: a retry of a delivery that arrived is answered `duplicate`.
    delivered = await deliver(operation_id, body, f"report-{entry_id.decode()}")
    if delivered != "retry":
        await redis.xack(STREAM, GROUP, entry_id)
    return delivered == "accepted"


def webhook(http: httpx.AsyncClient, config: WorkerConfig) -> Deliver:
    """Delivery through the signed webhook (v2) of the API at `config.api_url`."""

    async def deliver(operation_id: str, body: bytes, delivery_id: str) -> Delivered:
        headers = webhooks.signed_headers(config.secret, operation_id, body, delivery_id=delivery_id)
        try:
            response = await http.post(
                f"{config.api_url}/api/chat/operations/{operation_id}/complete", content=body, headers=headers
            )
        except httpx.HTTPError as e:
            log.warning("webhook of operation %s failed (%s); sent again next round", operation_id, type(e).__name__)
            return "retry"
        if response.status_code == 202:
            return "accepted"
        if response.is_success or response.status_code == 404:
            return "acknowledged"
        log.warning("webhook of operation %s answered %s; sent again next round", operation_id, response.status_code)
        return "retry"

    return deliver


def enqueue(redis: Redis, settings: Settings) -> Deliver:
    """Delivery straight into the completions stream, as the webhook enqueues it (for a worker inside the API)."""

    async def deliver(operation_id: str, body: bytes, delivery_id: str) -> Delivered:
        result = orjson.loads(body)["result"]
        entry = await publish_delivery(
            redis,
            Completion(operation_id, True, result, None),
            delivery_id=delivery_id,
            remember_seconds=2 * settings.webhook_tolerance_seconds + 60,
            max_len=settings.completion_stream_max_len,
        )
        return "acknowledged" if entry is None else "accepted"

    return deliver


async def run(redis_url: str, config: WorkerConfig, stop: asyncio.Event, deliver: Deliver | None = None) -> None:
    """Process jobs until `stop` is set, riding out idle periods and Redis restarts. Completions go through the
    webhook unless `deliver` says otherwise."""
    redis = connect(redis_url)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await _loop(redis, deliver or webhook(http, config), config, stop)
    finally:
        await redis.aclose()
    log.info("report worker stopped")


async def _loop(redis: Redis, deliver: Deliver, config: WorkerConfig, stop: asyncio.Event) -> None:
    pause, group_ready = FIRST_PAUSE_SECONDS, False
    while not stop.is_set():
        try:
            if not group_ready:
                await ensure_group(redis)
                group_ready = True
            await process_available(redis, deliver, config)
            pause = FIRST_PAUSE_SECONDS
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("job group missing (Redis restarted or flushed?); creating it again")
            group_ready = False
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            log.warning("Redis unreachable (%s); trying again in %.1fs", type(e).__name__, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            pause = min(pause * 2, LONGEST_PAUSE_SECONDS)


IN_PROCESS_WORK_SECONDS = 2.0
"""How long the in-process worker of the demo takes to write a report: long enough to see it pending."""


@contextlib.asynccontextmanager
async def in_process(redis_url: str, settings: Settings) -> AsyncIterator[None]:
    """The worker as a task of this process for as long as the context lasts (the demo's `generate_report`)."""
    stop = asyncio.Event()
    redis = connect(redis_url)
    config = WorkerConfig("", "", IN_PROCESS_WORK_SECONDS, consumer="in-process")
    task = asyncio.create_task(_loop(redis, enqueue(redis, settings), config, stop), name="in-process report worker")
    log.info("the example report worker runs in process (generate_report works without starting one)")
    try:
        yield
    finally:
        stop.set()
        try:
            async with asyncio.timeout(config.block_seconds + config.work_seconds + 2):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()


async def _run_until_signalled(redis_url: str, config: WorkerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(redis_url, config, stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis the API pods use")
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="base URL of the copilot-chat API")
    parser.add_argument("--secret", required=True, help="COPILOT_WEBHOOK_SECRET of the API")
    parser.add_argument("--work-seconds", type=float, default=5.0, help="how long writing one report takes")
    parser.add_argument("--consumer", default=f"worker-{socket.gethostname()}", help="this worker's name in the group")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    config = WorkerConfig(args.api, args.secret, args.work_seconds, args.consumer)
    asyncio.run(_run_until_signalled(args.redis, config))
    return 0
