"""Request interceptors that may answer before any provider call: the semantic cache and the
knowledge base (curated answers, passages attached as context).

Imports ``cache``, ``retrieval``, ``gateway.telemetry``, ``gateway.policy`` and ``gateway.core``.
"""
