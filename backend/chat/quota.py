"""The turns' port to per-user limits, and who pays for the model calls made in the current task.

`TurnQuota` is what `TurnAdmission` asks before a turn starts and `TurnDriver` tells when it has ended. The
implementation (`streams/user_limits.py`) is plugged in by `runtime.py`, so neither knows the limits nor their keys.

`billed_to` names the user that model calls are spent for. It is a context variable, so it follows a turn into the
tasks the turn starts (background compactions) without any signature learning about billing: the driver sets it
for a turn's task and the admission around scheduling a session title, and the model client's usage hook reads it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from backend.redis_batch import Group


class TurnQuota(Protocol):
    async def admit(self, user_id: str, turn_id: str, *, enforce: bool) -> None:
        """Take a slot for the turn. With `enforce`, raise `RateLimited` instead when one of the user's limits is
        reached; without it the turn is never refused (it still counts against the user's next turns)."""

    async def release(self, user_id: str, turn_id: str) -> None:
        """Give the turn's slot back once it has ended. Must never raise: it runs on every exit path of a turn."""

    def releasing(self, user_id: str, turn_id: str) -> Sequence[Group]:
        """`release` as Redis work to send in the same round trip as the turn's end (`redis_batch.send`), ahead of
        it: a client that saw the end may start its next turn at once. Nothing when no slots are counted."""


_billed_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("copilot_billed_user", default=None)


def billed_user() -> str | None:
    """The user the model calls of the current context are spent for (None: nobody, e.g. outside a turn)."""
    return _billed_user.get()


@contextmanager
def billed_to(user_id: str) -> Iterator[None]:
    """Model calls made in this block, and in the tasks started in it, are spent for `user_id`."""
    token = _billed_user.set(user_id)
    try:
        yield
    finally:
        _billed_user.reset(token)


def billed_context(user_id: str) -> contextvars.Context:
    """A copy of the current context in which model calls are spent for `user_id` (for a task's `context=`)."""
    context = contextvars.copy_context()
    context.run(_billed_user.set, user_id)
    return context
