"""Long-running tools (and a slow ordinary one) for the operation tests: `tools=["tests.chat.long_tools:registry"]`.

`registry` is a factory, so each app gets fresh tools and a test reads what they did from its own app
(`runtime.tools.get("slow_echo")`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from backend.tools.base import Tool, ToolContext
from backend.tools.delegation import Delegation
from backend.tools.registry import ToolRegistry


class EchoArgs(BaseModel):
    text: str
    seconds: float = 0.3


class SlowEcho(Tool[EchoArgs]):
    name = "slow_echo"
    description = "Repeat the text, slowly."
    args_model = EchoArgs
    is_long_running = True
    timeout_seconds = 10.0

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def execute(self, args: EchoArgs, ctx: ToolContext) -> Any:
        self.calls.append(args.text)
        await asyncio.sleep(args.seconds)
        return {"echo": args.text}


class FailingJob(Tool[EchoArgs]):
    name = "failing_job"
    description = "Always fails after a while."
    args_model = EchoArgs
    is_long_running = True
    timeout_seconds = 10.0

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def execute(self, args: EchoArgs, ctx: ToolContext) -> Any:
        self.calls.append(args.text)
        await asyncio.sleep(args.seconds)
        raise RuntimeError(f"the job for {args.text!r} broke")


class GatedDelegation(Tool[EchoArgs]):
    """Hands its job to an external service, then returns `accepted` only when the test opens the gate: a service
    so fast that its webhook is processed before the tool has returned."""

    name = "gated_delegation"
    description = "Delegates a job."
    args_model = EchoArgs
    is_long_running = True
    timeout_seconds = 10.0

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def execute(self, args: EchoArgs, ctx: ToolContext) -> Any:
        delegation = ctx.extra["delegation"]
        assert isinstance(delegation, Delegation)
        accepted = await delegation.submit("gated", {"text": args.text})
        await self.gate.wait()
        return accepted


class PauseArgs(BaseModel):
    seconds: float = 1.0


class Pause(Tool[PauseArgs]):
    """An ordinary tool (the turn waits for it) that takes a while: something to do things to in the middle of."""

    name = "pause"
    description = "Wait a moment."
    args_model = PauseArgs

    async def execute(self, args: PauseArgs, ctx: ToolContext) -> Any:
        await asyncio.sleep(args.seconds)
        return {"paused": args.seconds}


def registry() -> ToolRegistry:
    return ToolRegistry([SlowEcho(), FailingJob(), GatedDelegation(), Pause()])
