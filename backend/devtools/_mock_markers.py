"""The ``[[mock:<scenario> key=value ...]]`` marker syntax: finding markers in text and reading their values.

What each scenario does with its marker lives in ``_mock_scenarios``.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

_MARKER_OPEN = re.compile(r"\[\[mock:(\w+)")
_PARAM_OR_CLOSE = re.compile(r"\s*(?:(\]\])|(\w+)=)")
_BARE_VALUE = re.compile(r"[^\s\]]+")
_JSON = json.JSONDecoder()


class MarkerError(ValueError):
    """A ``[[mock:...]]`` marker that cannot be parsed, has a bad value or names no scenario."""


@dataclass(frozen=True)
class Marker:
    """One ``[[mock:name key=value ...]]`` directive from the last user message."""

    name: str
    params: dict[str, Any]
    text: str
    """The marker as written; it is the counter key when ``times`` is given without ``key``."""

    def number(self, key: str, default: float) -> float:
        value = self.params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise MarkerError(f"{self.text}: {key} must be a non-negative number")
        return float(value)

    def count(self, key: str, default: int) -> int:
        value = self.params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MarkerError(f"{self.text}: {key} must be a non-negative integer")
        return value


def parse_markers(text: str) -> list[Marker]:
    """Every ``[[mock:...]]`` marker in ``text``, in order of appearance.

    A value starting with ``{``, ``[`` or ``"`` is read as JSON (so it may hold spaces and ``]]``);
    any other value runs to the next space or ``]`` and becomes an int or float if it looks like one.
    """
    markers = []
    pos = 0
    while (opening := _MARKER_OPEN.search(text, pos)) is not None:
        pos = opening.end()
        params: dict[str, Any] = {}
        while (token := _PARAM_OR_CLOSE.match(text, pos)) is not None and not token.group(1):
            params[token.group(2)], pos = _parse_value(text, token.end())
        if token is None:
            raise MarkerError(f"malformed mock marker: {text[opening.start() : pos + 20]!r}")
        pos = token.end()
        markers.append(Marker(opening.group(1), params, text[opening.start() : pos]))
    return markers


def _parse_value(text: str, pos: int) -> tuple[Any, int]:
    if text.startswith(("{", "[", '"'), pos):
        try:
            return _JSON.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise MarkerError(f"bad JSON value in mock marker: {e}") from e
    bare = _BARE_VALUE.match(text, pos)
    if bare is None:
        raise MarkerError(f"missing value in mock marker: {text[pos - 20 : pos + 20]!r}")
    for number in (int, float):
        with contextlib.suppress(ValueError):
            return number(bare.group()), bare.end()
    return bare.group(), bare.end()
