"""Semantic cache: exact and embedding lookups in strict isolation scopes."""
