"""How long the Redis Streams the service appends to may grow (turn streams aside: see `streams/turns.py`).

Each bounded stream is written with `XADD ... MAXLEN ~ <bound>`: Redis drops the oldest entries once a stream holds
more, in whole nodes (`stream-node-max-entries`, 100 by default), so a stream can hold up to about that many more
than its bound. Trimming does not look at consumer groups: the bounds are meant to be far above what is ever waiting
to be processed, and an entry trimmed before it was processed is lost (its operation then fails at its deadline).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Entries kept per stream; the defaults are those of the settings of the same purpose (`backend/config.py`)."""

    completions: int = 10_000
    """`copilot:completions` (`completion_stream_max_len`)."""
    dead_letters: int = 1_000
    """`copilot:completions:dead` (`completion_dead_letter_max_len`)."""
    jobs: int = 10_000
    """Each `copilot:jobs:<kind>` (`job_stream_max_len`)."""
