"""Wire protocol name -> adapter. Adding a provider adds one line here."""

from __future__ import annotations

from .anthropic import AnthropicAdapter
from .base import ProviderAdapter
from .gemini import GeminiAdapter
from .ollama import OllamaAdapter
from .openai import OpenAIAdapter

_ADAPTERS: dict[str, ProviderAdapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "ollama": OllamaAdapter(),
}

KINDS = frozenset(_ADAPTERS)


def adapter_for(kind: str) -> ProviderAdapter:
    """The (stateless, shared) adapter for a wire protocol."""
    try:
        return _ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; known: {sorted(_ADAPTERS)}") from None
