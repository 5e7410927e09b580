"""What a turn's model calls used and cost: the provider's token counts summed over the turn's steps, priced with
`COPILOT_MODEL_PRICES` (USD per million tokens). No network: a model without a price has no cost."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backend.chat.llm import Usage
from backend.config import ModelPrice

_PER_TOKEN = 1e-6


@dataclass(slots=True)
class TurnUsage:
    """Token counts summed over the model calls of one turn (every call the provider reported usage for, refused
    attempts included: they were paid for)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    calls: int = 0

    def add(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        self.calls += 1


def cost_usd(
    price: ModelPrice | None, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> float | None:
    """The cost of these tokens at `price`; None without a price. Cached tokens are part of the prompt tokens."""
    if price is None:
        return None
    cached = min(cached_tokens, prompt_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    total = (prompt_tokens - cached) * price.input + cached * cached_rate + completion_tokens * price.output
    return round(total * _PER_TOKEN, 10)


def finish_metadata(model: str, usage: TurnUsage, prices: Mapping[str, ModelPrice]) -> dict[str, Any] | None:
    """The `messageMetadata` of a turn's `finish` chunk: its usage, model and (when priced) cost; None when the
    provider reported no usage."""
    if not usage.calls:
        return None
    metadata: dict[str, Any] = {
        "model": model,
        "usage": {
            "promptTokens": usage.prompt_tokens,
            "completionTokens": usage.completion_tokens,
            "cachedTokens": usage.cached_tokens,
            "reasoningTokens": usage.reasoning_tokens,
            "totalTokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }
    cost = cost_usd(
        prices.get(model),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
    )
    if cost is not None:
        metadata["costUsd"] = cost
    return metadata
