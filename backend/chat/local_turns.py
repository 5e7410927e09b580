"""The turns this pod runs: what the driver records when it starts one, and the admission and supervisor read.

A turn stopped here is cancelled with a reason (`CANCEL` for the stop button, `SHUTDOWN` for a pod that stops), so
the driver can tell the user's stop from the server's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from uuid import UUID

from backend.chat.publisher import TurnPublisher

CANCEL, SHUTDOWN = "cancel", "shutdown"


@dataclass
class LocalTurns:
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    """Running turns (turn id → the task that drives it)."""
    publishers: dict[str, TurnPublisher] = field(default_factory=dict)
    """Their publishers, for followers on this pod (read from memory, not from Redis)."""
    anchored: dict[str, UUID] = field(default_factory=dict)
    """Turns that hold their session in Postgres (turn id → session id): the leases the supervisor renews."""
    unreleased: dict[str, UUID] = field(default_factory=dict)
    """Ended turns whose Postgres anchor could not be freed yet (turn id → session id): the supervisor retries."""
    admitting: set[str] = field(default_factory=set)
    """Turns let in under the pod's cap that the driver does not run yet (their session being claimed, their message
    stored): each holds its place, so requests that arrive together cannot all pass the cap."""

    @property
    def count(self) -> int:
        """Turns running here or being let in: what `max_concurrent_turns` caps."""
        return len(self.tasks) + len(self.admitting)

    def holds(self, turn_id: str) -> bool:
        """Whether the turn runs here or is being let in."""
        return turn_id in self.tasks or turn_id in self.admitting

    def stop(self, turn_id: str) -> bool:
        """Stop the turn if it runs here (as the user's stop); False if it does not."""
        task = self.tasks.get(turn_id)
        if task is None:
            return False
        stop(task)
        return True


def stop(task: asyncio.Task[None]) -> None:
    """Cancel a turn once: the cancel flag stays set while it winds down, and a second cancellation would cut short
    the storing of its partial reply and the writing of its end."""
    if not task.cancelling():
        task.cancel(CANCEL)
