"""The example external service of `generate_report`: takes report jobs from Redis, writes the report, and
reports back through the signed webhook (v2). `scripts/report_worker.py` runs it.

Jobs are read in a consumer group, so several workers share them, and a job is acknowledged only once the API
accepted its completion, answered that it is a duplicate of one it accepted, or does not know the operation.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from backend import keys, webhooks

log = logging.getLogger("copilot.report_worker")
GROUP = "report-workers"


def write_report(topic: str, sections: int) -> dict[str, Any]:
    parts = [
        {"heading": f"{i}. {title} of {topic}", "text": f"Findings about {topic}, part {i} of {sections}."}
        for i, title in enumerate(["Overview", "Details", "Risks", "Options", "Next steps"] * 2, start=1)
    ][:sections]
    return {"type": "report", "topic": topic, "sections": parts}


async def process_one(redis: Redis, http: httpx.AsyncClient, *, api_url: str, secret: str, work_seconds: float) -> int:
    """Handle the jobs available now (waiting up to 5 s for one); returns how many were completed."""
    try:
        await redis.xgroup_create(keys.jobs("report"), GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    reply: Any = await redis.xreadgroup(GROUP, "worker", {keys.jobs("report"): ">"}, count=10, block=5000)
    done = 0
    for _, entries in reply or []:
        for entry_id, fields in entries:
            job = orjson.loads(fields[b"job"])
            await asyncio.sleep(work_seconds)
            payload = job["payload"]
            body = orjson.dumps({"success": True, "result": write_report(payload["topic"], int(payload["sections"]))})
            url = f"{api_url}/api/chat/operations/{job['operation_id']}/complete"
            # One delivery id per job, the same on every retry: a retry of one that arrived is answered `duplicate`.
            delivery_id = f"report-{entry_id.decode()}"
            headers = webhooks.signed_headers(secret, job["operation_id"], body, delivery_id=delivery_id)
            response = await http.post(url, content=body, headers=headers)
            if response.is_success or response.status_code == 404:
                await redis.xack(keys.jobs("report"), GROUP, entry_id)
                done += response.status_code == 202
            else:
                log.warning("webhook answered %s: %s", response.status_code, response.text)
    return done


async def run(redis_url: str, api_url: str, secret: str, work_seconds: float) -> None:
    redis = Redis.from_url(redis_url)
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            await process_one(redis, http, api_url=api_url, secret=secret, work_seconds=work_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis the API pods use")
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="base URL of the copilot-chat API")
    parser.add_argument("--secret", required=True, help="COPILOT_WEBHOOK_SECRET of the API")
    parser.add_argument("--work-seconds", type=float, default=5.0, help="how long writing one report takes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run(args.redis, args.api, args.secret, args.work_seconds))
    return 0
