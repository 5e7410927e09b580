"""The pod's cap on the turns it runs (`max_concurrent_turns`): overload is shed, not shared.

A pod that takes more turns than it can serve slows every stream it runs. Past its cap a new turn is refused
(`Overloaded`: 503, `Retry-After`) before anything of it is stored or claimed, so the client (or the load balancer)
sends the same request again, to another pod or here a moment later. A resend of a turn that exists, a read, a
replay, a cancel are never refused: only the start of a new turn on this pod is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from backend.chat.local_turns import LocalTurns
from backend.errors import Overloaded


class TurnCapacity:
    def __init__(
        self,
        local: LocalTurns,
        *,
        max_running: int = 0,
        retry_after: int = 1,
        on_overloaded: Callable[[], None] | None = None,
    ) -> None:
        """`max_running`: turns this pod may run at once (0: no cap); `retry_after`: the refusal's `Retry-After`
        seconds; `on_overloaded` hears each refusal (metrics)."""
        self._local = local
        self._max_running = max_running
        self._retry_after = retry_after
        self._on_overloaded = on_overloaded

    @property
    def full(self) -> bool:
        """Whether a new turn would be refused now."""
        return 0 < self._max_running <= self._local.count

    def holds(self, turn_id: str) -> bool:
        """Whether `turn_id` runs here or is being let in (it needs no second place)."""
        return self._local.holds(turn_id)

    @contextmanager
    def seat(self, turn_id: str) -> Iterator[None]:
        """Hold one of the places for `turn_id` while it is let in: `Overloaded` when none is free. Once the driver
        runs the turn its task holds the place; a refusal on the way gives it back. Taken without awaiting
        anything, so requests that arrive together cannot all pass the cap."""
        local = self._local
        if local.holds(turn_id):  # a resend that raced its original: it finds that turn
            yield
            return
        if self.full:
            raise self.overloaded()
        local.admitting.add(turn_id)
        try:
            yield
        finally:
            local.admitting.discard(turn_id)

    def overloaded(self) -> Overloaded:
        """The refusal of a new turn (counted)."""
        if self._on_overloaded is not None:
            self._on_overloaded()
        return Overloaded(
            f"this server is generating as many replies as it can ({self._max_running}); send the request again",
            retry_after=self._retry_after,
        )
