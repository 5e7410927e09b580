"""`backend/chat/usage.py`: a turn's usage summed over its calls, priced per million tokens."""

from __future__ import annotations

import pytest

from backend.chat.llm import Usage
from backend.chat.usage import TurnUsage, cost_usd, finish_metadata
from backend.config import ModelPrice

PRICE = ModelPrice(input=0.15, output=0.6, cached_input=0.075)


def test_cached_tokens_are_priced_at_the_cached_rate() -> None:
    cost = cost_usd(PRICE, prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=400_000)
    assert cost == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.6)


def test_without_a_cached_rate_cached_tokens_cost_the_input_rate() -> None:
    price = ModelPrice(input=1.0, output=2.0)
    assert cost_usd(price, prompt_tokens=500_000, completion_tokens=0, cached_tokens=200_000) == pytest.approx(0.5)


def test_no_price_no_cost() -> None:
    assert cost_usd(None, prompt_tokens=10, completion_tokens=10) is None


def test_cached_tokens_beyond_the_prompt_are_not_trusted() -> None:
    assert cost_usd(PRICE, prompt_tokens=10, completion_tokens=0, cached_tokens=50) == pytest.approx(10 * 0.075e-6)


def test_finish_metadata_sums_the_calls_of_the_turn() -> None:
    usage = TurnUsage()
    usage.add(Usage(100, 10, cached_tokens=50))
    usage.add(Usage(200, 20, reasoning_tokens=5))
    metadata = finish_metadata("gpt-4o-mini", usage, {"gpt-4o-mini": PRICE})
    assert metadata is not None
    assert metadata["model"] == "gpt-4o-mini"
    assert metadata["usage"] == {
        "promptTokens": 300,
        "completionTokens": 30,
        "cachedTokens": 50,
        "reasoningTokens": 5,
        "totalTokens": 330,
    }
    assert metadata["costUsd"] == pytest.approx((250 * 0.15 + 50 * 0.075 + 30 * 0.6) / 1e6)


def test_no_usage_reported_no_metadata_and_no_price_no_cost() -> None:
    assert finish_metadata("m", TurnUsage(), {}) is None
    usage = TurnUsage()
    usage.add(Usage(1, 1))
    metadata = finish_metadata("m", usage, {"other": PRICE})
    assert metadata is not None and "costUsd" not in metadata


def test_prices_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ModelPrice(input=-1, output=0)
