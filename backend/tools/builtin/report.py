"""`generate_report`: a long-running tool that hands its work to an external worker (`scripts/report_worker.py`).

It shows the whole path of a delegated operation: the turn ends at once with `operation_started`, the worker picks
the job from Redis, writes the report and calls the signed webhook, and the conversation continues with the
report, on whichever pod consumes the completion.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from backend.tools.base import Tool, ToolContext
from backend.tools.delegation import Delegation


class ReportArgs(BaseModel):
    topic: str = Field(min_length=1, max_length=200, description="What the report is about.")
    sections: int = Field(default=3, ge=1, le=10, description="How many sections the report has.")


class GenerateReport(Tool[ReportArgs]):
    name = "generate_report"
    description = (
        "Write a detailed report on a topic. Takes minutes: it runs in the background and its result arrives later "
        "in this conversation."
    )
    args_model = ReportArgs
    is_long_running = True
    timeout_seconds = 30.0

    async def execute(self, args: ReportArgs, ctx: ToolContext) -> Any:
        delegation = ctx.extra.get("delegation")
        if not isinstance(delegation, Delegation):
            raise RuntimeError("generate_report runs only as a long-running operation")
        return await delegation.submit("report", {"topic": args.topic, "sections": args.sections})
