"""`ask_user`: the model asks the user a question (optionally with choices) and waits for the answer.

The call is never run on the server: the turn stores it as waiting for the user, and the answer comes back the way a
frontend tool's output does (useChat's `addToolOutput`, the REST endpoint, the WebSocket `reply` frame).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from backend.tools.base import Tool, ToolContext


class AskUserArgs(BaseModel):
    question: str = Field(min_length=1, max_length=2000, description="The question, in the user's language.")
    choices: list[str] | None = Field(
        default=None,
        max_length=10,
        description="Answers to offer as buttons, when the question has a few obvious ones; the user may still type.",
    )


class AskUser(Tool[AskUserArgs]):
    name = "ask_user"
    description = (
        "Ask the user a question and wait for the answer, when you cannot go on without it (a missing detail, a "
        "choice between options). Do not ask what you can find out with another tool."
    )
    args_model = AskUserArgs
    answered_by_user = True

    async def execute(self, args: AskUserArgs, ctx: ToolContext) -> Any:
        raise RuntimeError("ask_user is answered by the user, never run")  # the turn never calls it
