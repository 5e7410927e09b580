"""Every Redis key the service uses, in one place.

Keys of one session share the hash tag `{<session id>}` so a Redis Cluster keeps them on one slot and the
multi-key scripts that touch them stay valid. Keys of one user (the per-user limits) share `{<user id>}` likewise.
"""

from __future__ import annotations

from uuid import UUID

PREFIX = "copilot"


def session_messages(session_id: UUID) -> str:
    """List: a sentinel at index 0, then the session's messages, message `n` at index `n`."""
    return f"{PREFIX}:{{{session_id}}}:messages"


def session_meta(session_id: UUID) -> str:
    """String: the session row as JSON."""
    return f"{PREFIX}:{{{session_id}}}:meta"


def session_generation(session_id: UUID) -> str:
    """Random token replaced by every write of the session; a cache fill only lands if it has not changed."""
    return f"{PREFIX}:{{{session_id}}}:gen"


def session_pending_writes(session_id: UUID) -> str:
    """List: appends to the session that Postgres did not take (it was down), oldest first, as JSON; stored in order
    once it answers, and removed one by one after each has committed."""
    return f"{PREFIX}:{{{session_id}}}:pending-writes"


def session_pending_lock(session_id: UUID) -> str:
    """String: held (a lease) by the one pod storing the session's pending writes."""
    return f"{PREFIX}:{{{session_id}}}:pending-lock"


PENDING_SESSIONS = f"{PREFIX}:pending-sessions"
"""Sorted set: sessions that have pending writes, scored by when the first was kept (the reconciler's work list)."""


def turn_events(turn_id: str) -> str:
    """Stream: the UI chunks of one turn, from `start` to an `end` entry."""
    return f"{PREFIX}:turn:{{{turn_id}}}:events"


def turn_meta(turn_id: str) -> str:
    """Hash: session, user and status of one turn."""
    return f"{PREFIX}:turn:{{{turn_id}}}:meta"


def active_turn(session_id: UUID) -> str:
    """String: the id of the session's running turn (absent when none runs)."""
    return f"{PREFIX}:{{{session_id}}}:active-turn"


def turn_tombstone(turn_id: str) -> str:
    """String: the user of a turn, kept for days after its stream expired (410 instead of 404)."""
    return f"{PREFIX}:turn:{{{turn_id}}}:tombstone"


def turn_cancel(turn_id: str) -> str:
    """String: set when someone asked the turn to stop; its owner polls for it."""
    return f"{PREFIX}:turn:{{{turn_id}}}:cancel"


def agui_run(run_id: str) -> str:
    """Hash: the turn, thread and user of an AG-UI run (a client-chosen `runId`), so its events can be replayed."""
    return f"{PREFIX}:agui-run:{{{run_id}}}"


TURN_LEASES = f"{PREFIX}:turn-leases"
"""Sorted set: running turns scored by the deadline of their owner's lease."""


def compaction_lock(session_id: UUID) -> str:
    """String: held while a pod extends the session's rolling summary."""
    return f"{PREFIX}:{{{session_id}}}:compaction"


def operation_lock(session_id: UUID, tool_name: str, arguments_digest: str) -> str:
    """String: held while an operation of this tool with these arguments runs in the session (a lease; the fast path
    of the lock in `chat_operations`)."""
    return f"{PREFIX}:{{{session_id}}}:op-lock:{tool_name}:{arguments_digest}"


COMPLETIONS = f"{PREFIX}:completions"
"""Stream: completions of long-running operations (from the webhook or from services sharing Redis)."""

COMPLETIONS_DEAD = f"{PREFIX}:completions:dead"
"""Stream: completions that failed too many times, kept for inspection."""


def webhook_delivery(delivery_id: str) -> str:
    """String: a webhook delivery id accepted within the replay window (a second one is a duplicate).

    Hash-tagged with the name of `COMPLETIONS`, so a Redis Cluster keeps it on the stream's slot and one script can
    record the delivery and append the completion atomically."""
    return f"{PREFIX}:webhook-delivery:{{{COMPLETIONS}}}:{delivery_id}"


COMPLETIONS_GROUP = "copilot-completions"
"""Consumer group of every pod on the completions stream."""


def jobs(kind: str) -> str:
    """Stream: jobs handed to external services of one kind (e.g. `report`)."""
    return f"{PREFIX}:jobs:{kind}"


def _user_tag(user_id: str) -> str:
    """The user id as a hash tag: braces (and the escape character) escaped, so any JWT `sub` stays one tag."""
    return "{" + user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D") + "}"


def user_requests(user_id: str) -> str:
    """Sorted set: the user's API requests of the last minute, scored by time (ms); the per-minute limit."""
    return f"{PREFIX}:user:{_user_tag(user_id)}:requests"


def user_turns(user_id: str) -> str:
    """Sorted set: the user's running turns, scored by the deadline (ms) of the lease their pod renews."""
    return f"{PREFIX}:user:{_user_tag(user_id)}:turns"


def user_tokens(user_id: str, day: str) -> str:
    """Counter: model tokens the user spent on one UTC day (`YYYY-MM-DD`)."""
    return f"{PREFIX}:user:{_user_tag(user_id)}:tokens:{day}"
