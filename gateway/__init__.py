"""knowledge-gateway: the decision layer in front of every LLM call."""

__version__ = "0.1.0"
