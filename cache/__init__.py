"""Semantic cache: exact and embedding lookups in strict isolation scopes (see the [cache] issue)."""
