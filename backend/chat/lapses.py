"""Telling an owner that died from a Redis that was away, before anyone closes the owner's turn.

A lease is a wall-clock deadline in Redis. When Redis is unreachable for longer than a lease and comes back, every
running turn's lease looks lapsed, live owners' included: an owner renews only on its next supervisor tick. A pod
that closed those turns at once would store a partial reply under the key the owner's complete reply needs, and tell
followers the reply was interrupted while the owner was still streaming it.

So a lapse counts only once this pod has seen it last `grace` seconds (longer than an owner needs to renew), with no
failed Redis call of its own in between: an owner that is alive renews within that time once Redis answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LapseWatch:
    def __init__(self, grace_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace = grace_seconds
        self._clock = clock
        self._first_seen: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}

    def confirmed(self, turn_id: str, lapsed: bool) -> bool:
        """Record one observation of `turn_id`'s lease; True once it has been seen lapsed for the whole grace."""
        if not lapsed:
            self.forget(turn_id)
            return False
        now = self._clock()
        first = self._first_seen.setdefault(turn_id, now)
        self._last_seen[turn_id] = now
        return now - first >= self._grace

    def forget(self, turn_id: str) -> None:
        """The turn was closed (or renewed): its next lapse is watched from scratch."""
        self._first_seen.pop(turn_id, None)
        self._last_seen.pop(turn_id, None)

    def reset(self) -> None:
        """A Redis call failed: owners may not have been able to renew either, so every lapse is watched anew."""
        self._first_seen.clear()
        self._last_seen.clear()

    def prune(self) -> None:
        """Drop turns no one looked at for a while (ended, or closed by another pod); a later lapse starts over."""
        stale = self._clock() - 2 * self._grace
        for turn_id in [t for t, seen in self._last_seen.items() if seen < stale]:
            self.forget(turn_id)

    def __len__(self) -> int:
        return len(self._first_seen)
