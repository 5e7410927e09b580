"""Tool registries for `load_registry` tests, imported as `tests.tools.sample_registry:<attribute>`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from backend.tools.base import Tool, ToolContext
from backend.tools.registry import ToolRegistry


class EchoArgs(BaseModel):
    text: str


class Echo(Tool[EchoArgs]):
    name = "echo"
    description = "Repeat the text."
    args_model = EchoArgs

    def __init__(self, name: str = "echo") -> None:
        self.name = name

    async def execute(self, args: EchoArgs, ctx: ToolContext) -> str:
        return args.text


registry = ToolRegistry([Echo()])


def make_registry() -> ToolRegistry:
    return ToolRegistry([Echo("echo_made")])


class Holder:
    registry = ToolRegistry([Echo("echo_held")])


def make_clashing_registry() -> ToolRegistry:
    """Clashes with the built-in calculator."""
    return ToolRegistry([Echo("calculate")])


not_a_registry = 42


def make_list() -> list[Any]:
    return [Echo()]


def broken_factory() -> ToolRegistry:
    raise RuntimeError("factory exploded")
