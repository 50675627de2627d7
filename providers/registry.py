"""Wire protocol name -> adapter. Adding a provider adds one line here."""

from __future__ import annotations

from .anthropic import AnthropicAdapter
from .base import ProviderAdapter
from .embeddings import EmbeddingAdapter
from .gemini import GeminiAdapter
from .ollama import OllamaAdapter
from .openai import OpenAIAdapter

_OPENAI, _GEMINI, _OLLAMA = OpenAIAdapter(), GeminiAdapter(), OllamaAdapter()
_ADAPTERS: dict[str, ProviderAdapter] = {
    "openai": _OPENAI,
    "anthropic": AnthropicAdapter(),
    "gemini": _GEMINI,
    "ollama": _OLLAMA,
}
# The kinds with an embeddings API (Anthropic has none).
_EMBEDDING_ADAPTERS: dict[str, EmbeddingAdapter] = {
    "openai": _OPENAI,
    "gemini": _GEMINI,
    "ollama": _OLLAMA,
}

KINDS = frozenset(_ADAPTERS)
EMBEDDING_KINDS = frozenset(_EMBEDDING_ADAPTERS)


def adapter_for(kind: str) -> ProviderAdapter:
    """The (stateless, shared) adapter for a wire protocol."""
    try:
        return _ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; known: {sorted(_ADAPTERS)}") from None


def embedding_adapter_for(kind: str) -> EmbeddingAdapter | None:
    """The embedding half of a wire protocol; ``None`` for one without an embeddings API."""
    return _EMBEDDING_ADAPTERS.get(kind)
