"""The tools every deployment has: small, dependency-free demos of the plug-in API."""

from __future__ import annotations

from typing import Any

from backend.tools.base import Tool
from backend.tools.builtin.ask_user import AskUser
from backend.tools.builtin.calculator import Calculate
from backend.tools.builtin.clock import GetCurrentTime
from backend.tools.builtin.help_docs import SearchHelpDocs
from backend.tools.builtin.report import GenerateReport


def builtin_tools() -> list[Tool[Any]]:
    """Fresh instances of the built-in tools."""
    return [GetCurrentTime(), Calculate(), SearchHelpDocs(), GenerateReport(), AskUser()]
