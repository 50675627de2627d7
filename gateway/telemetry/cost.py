"""What an answer cost in USD, from its token usage and the model's price per million tokens."""

from __future__ import annotations

from gateway.core.decision import Decision
from gateway.policy.model import ModelConfig
from providers.base import Usage

_PER = 1_000_000


def usage_cost(model: ModelConfig, usage: Usage) -> float:
    """USD for ``usage`` at ``model``'s price."""
    price = model.price
    return (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / _PER


def charge(decision: Decision, model: ModelConfig, usage: Usage) -> None:
    """Record an upstream answer's tokens and cost on its decision record."""
    decision.prompt_tokens += usage.prompt_tokens
    decision.completion_tokens += usage.completion_tokens
    decision.cost_usd += usage_cost(model, usage)
