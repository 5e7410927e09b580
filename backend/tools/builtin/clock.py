"""`get_current_time`: the date and time in an IANA time zone. Models do not know what time it is."""

from __future__ import annotations

import difflib
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from pydantic import BaseModel, Field

from backend.tools.base import Tool, ToolContext


class ClockArgs(BaseModel):
    timezone: str = Field(
        default="UTC",
        max_length=64,
        description="IANA time zone name, e.g. 'UTC', 'Europe/Paris' or 'America/New_York'.",
    )


class GetCurrentTime(Tool[ClockArgs]):
    name = "get_current_time"
    description = "Get the current date, time and weekday in a time zone (IANA name, default UTC)."
    args_model = ClockArgs
    timeout_seconds = 5.0

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        """`now` returns an aware datetime; tests pass a fixed one."""
        self._now = now or (lambda: datetime.now(UTC))

    async def execute(self, args: ClockArgs, ctx: ToolContext) -> dict[str, str]:
        zone = resolve_zone(args.timezone)
        now = self._now().astimezone(zone)
        return {
            "iso": now.isoformat(timespec="seconds"),
            "weekday": now.strftime("%A"),
            "timezone": str(zone),
            "utc_offset": now.strftime("%z"),
        }


def resolve_zone(key: str) -> tzinfo:
    """The zone called `key` (case-insensitive). Raises `ValueError` with suggestions for an unknown name."""
    key = key.strip()
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    if key.upper() in ("UTC", "Z"):
        return UTC  # no tz database installed (slim images): UTC still works
    available = zoneinfo.available_timezones()
    by_lower = {name.lower(): name for name in available}
    if key.lower() in by_lower:
        return zoneinfo.ZoneInfo(by_lower[key.lower()])
    close = difflib.get_close_matches(key.lower(), by_lower, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(by_lower[c]) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown time zone {key!r}: use an IANA name such as 'UTC', 'Europe/Paris' or 'America/New_York'.{hint}"
    )
