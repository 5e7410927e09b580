"""The turn summary the turn log and PostHog report at a turn's end, on a clock the test moves."""

from __future__ import annotations

from backend.observability.telemetry import Generation
from backend.observability.turn_tally import TurnSummary, TurnTally


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def generation(first_token_at: float | None, prompt: int | None, completion: int | None) -> Generation:
    return Generation("m", 0.0, 0.0, first_token_at, prompt, completion, "stop", None)


def test_a_turn_with_model_and_tool_calls_is_summed_up() -> None:
    clock = Clock(1000.0)
    tally = TurnTally(clock)
    tally.generation(generation(1000.25, 100, 20))
    tally.tool(ok=True)
    tally.tool(ok=False)
    tally.generation(generation(1001.5, 150, 10))  # a later first token does not move the turn's
    clock.now = 1002.0004

    assert tally.summary() == TurnSummary(
        duration_ms=2000.4,
        time_to_first_token_ms=250.0,
        model_calls=2,
        prompt_tokens=250,
        completion_tokens=30,
        tool_calls=2,
        tool_failures=1,
    )
    assert tally.summary().total_tokens == 280


def test_the_first_token_is_that_of_the_first_call_that_produced_one() -> None:
    clock = Clock(50.0)
    tally = TurnTally(clock)
    tally.generation(generation(None, None, None))  # failed before any token, no usage reported
    tally.generation(generation(50.75, 7, 3))
    clock.now = 51.0

    summary = tally.summary()
    assert summary.time_to_first_token_ms == 750.0
    assert (summary.model_calls, summary.prompt_tokens, summary.completion_tokens) == (2, 7, 3)


def test_a_turn_without_tokens_has_no_time_to_first_token() -> None:
    clock = Clock(10.0)
    tally = TurnTally(clock)
    tally.generation(generation(None, 12, None))
    clock.now = 10.5

    assert tally.summary() == TurnSummary(
        duration_ms=500.0,
        time_to_first_token_ms=None,
        model_calls=1,
        prompt_tokens=12,
        completion_tokens=0,
        tool_calls=0,
        tool_failures=0,
    )
